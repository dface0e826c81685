"""Segmentation data: an embedded synthetic dataset, a user's files in several layouts, and
batch iterators.

- :class:`SyntheticShapes`: deterministic synthetic scenes (no download): discs, squares,
  triangles and rings of random colours, sizes and orientations, overlapping, on textured noisy
  backgrounds. Fixed train / val splits drawn from separate random streams.
- A user's images and masks, read lazily through Pillow (only file names stay in memory), every
  mask checked at construction in one parallel pass (:func:`scan_masks`):
  :class:`FolderDataset` (``root/images/**`` + ``root/labels/**``, nested folders),
  :class:`VOCDataset` (``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/``),
  :class:`ListDataset` (a text file of image/mask pairs); :func:`open_dataset` picks the
  layout. Masks: mode "L", "P" or 16-bit, pixel value = class, 255 = ignore.
- :class:`BatchIterator`: shuffled mini-batches ``{"data", "label"}`` with a JSON-serialisable
  state, so a run resumed from a snapshot sees exactly the batches it would have seen.
- :class:`SegmentationLoader`: the same for a user's files, decoded and augmented
  (:mod:`convnet.transforms`) in background threads, with an exact resumable state.

Every dataset returns ``ds[i] -> (image, label)``: image float32 (3, H, W) scaled as
``(x - 0.5) / 0.25`` from [0, 1] (roughly zero mean, unit scale), label int64 (H, W).
"""

import json
import os

import numpy as np

from convnet.errors import ConfigError, DataError, FileFormatError, fail, where

IGNORE_LABEL = 255

#: images in [0, 1] are fed to networks as (x - MEAN) / SCALE
MEAN = 0.5
SCALE = 0.25

_SPLITS = {"train": 0, "val": 1}
# Scenes are drawn in chunks from one stream per (seed, split, chunk), so image i does not
# depend on num_images: a smaller dataset is a prefix of a larger one.
_CHUNK = 64


def normalize_image(rgb):
    """uint8 or [0, 1] float (H, W, 3) -> float32 (3, H, W) as the datasets return it."""
    rgb = np.asarray(rgb)
    x = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    return np.ascontiguousarray(((x - MEAN) / SCALE).transpose(2, 0, 1))


def denormalize_image(image):
    """float32 (3, H, W) as the datasets return it -> uint8 (H, W, 3) for display."""
    x = np.asarray(image, dtype=np.float32).transpose(1, 2, 0) * SCALE + MEAN
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


_PALETTE = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)],
    dtype=np.uint8)


def palette(num_classes):
    """(num_classes, 3) uint8 display colours: 21 fixed distinct ones (background black),
    then seeded random ones."""
    if num_classes <= len(_PALETTE):
        return _PALETTE[:num_classes].copy()
    extra = np.random.default_rng(0).integers(0, 256, (num_classes - len(_PALETTE), 3))
    return np.concatenate([_PALETTE, extra.astype(np.uint8)])


def colourise(label, num_classes, ignore_label=IGNORE_LABEL):
    """int (H, W) class map -> uint8 (H, W, 3) for display: ``palette`` colours, the ignore
    label white, any other value outside the classes mid grey."""
    label = np.asarray(label)
    out = np.full(label.shape + (3,), 128, dtype=np.uint8)
    valid = (label >= 0) & (label < num_classes)
    out[valid] = palette(num_classes)[label[valid]]
    out[label == ignore_label] = 255
    return out


def _check_int(value, param, owner, minimum):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        fail(owner, f"{param} must be an int >= {minimum}, got {value!r}")
    return int(value)


class SyntheticShapes:
    """Embedded synthetic segmentation dataset (deterministic, no download).

    Each scene is ``size`` x ``size`` with 1 to 4 shapes of random class, colour, size
    (radius 15% to 30% of ``size``), position (possibly cut by the border) and orientation
    (a multiple of 90 degrees: squares and triangles stand upright), painted in order so
    later shapes occlude earlier ones (a ring's hole, 35% to 55% of its radius, shows what
    lies beneath). Backgrounds: a random colour under two random sinusoidal textures (period 4 to
    12 pixels) and strong Gaussian noise; shapes are smooth (a colour with gentle shading and
    weak noise), so the texture, not the colour, tells object from background. Labels:
    0 background, 1 disc, 2 square, 3 triangle, 4 ring.

    Parameters: ``split`` ("train" or "val"; the splits come from separate random streams, so a
    val image never equals a train one), ``num_images`` (default 2000 for train, 200 for val),
    ``size`` (default 64, at least 16), ``seed`` (default 0).

    Example::

        ds = SyntheticShapes("val", num_images=8)
        image, label = ds[0]      # float32 (3, 64, 64), int64 (64, 64)
    """

    num_classes = 5
    class_names = ("background", "disc", "square", "triangle", "ring")
    ignore_label = IGNORE_LABEL

    def __init__(self, split="train", num_images=None, size=64, seed=0):
        self.name = split
        if split not in _SPLITS:
            fail(self, f"split must be 'train' or 'val', got {split!r}")
        if num_images is None:
            num_images = 2000 if split == "train" else 200
        self.split = split
        self.num_images = _check_int(num_images, "num_images", self, 1)
        self.size = _check_int(size, "size", self, 16)
        self.seed = _check_int(seed, "seed", self, 0)
        from convnet.backend.cpu import get_num_threads
        count = -(-self.num_images // _CHUNK)
        # each chunk has its own random stream, so rendering them on convnet's threads (NumPy
        # releases the GIL in its array passes) gives the same images
        threads = min(get_num_threads(), count)
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(threads) as pool:
                chunks = list(pool.map(self._render_chunk, range(count)))
        else:
            chunks = [self._render_chunk(c) for c in range(count)]
        self.images = np.concatenate([c[0] for c in chunks])[:self.num_images]
        # uint8 labels keep the cached dataset small; items and batches are int64
        self.labels = np.concatenate([c[1] for c in chunks])[:self.num_images]

    @property
    def type_name(self):
        return "SyntheticShapes"

    def __len__(self):
        return self.num_images

    def __getitem__(self, index):
        index = self._index(index)
        return self.images[index].copy(), self.labels[index].astype(np.int64)

    def get_batch(self, indices):
        """(images float32 (N, 3, H, W), labels int64 (N, H, W)) for a list of indices."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.images[indices], self.labels[indices].astype(np.int64)

    def _index(self, index):
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"SyntheticShapes indices must be ints, got {index!r}")
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"SyntheticShapes '{self.split}': index {index} out of range "
                             f"for {self.num_images} images")
        return int(index) % self.num_images

    def _render_chunk(self, chunk):
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], chunk])
        n, s = _CHUNK, self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        xx, yy = xx[None], yy[None]

        def per_image(a):
            return np.asarray(a, dtype=np.float32).reshape(n, 1, 1)

        # Background: a base colour, two oriented sinusoidal textures of period 4 to 12
        # pixels with random colour amplitudes, and strong pixel noise; the shapes are smooth
        # (weak noise, a gentle shading), so texture is what tells background from object.
        base = rng.uniform(0.2, 0.8, (n, 3)).astype(np.float32)
        image = np.broadcast_to(base[:, :, None, None], (n, 3, s, s)).copy()
        for _ in range(2):
            angle = rng.uniform(0, np.pi, n)
            freq = 2 * np.pi / rng.uniform(4.0, 12.0, n)
            phase = rng.uniform(0, 2 * np.pi, n)
            wave = np.sin(per_image(freq * np.cos(angle)) * xx
                          + per_image(freq * np.sin(angle)) * yy + per_image(phase))
            amplitude = rng.uniform(-0.2, 0.2, (n, 3)).astype(np.float32)
            image += amplitude[:, :, None, None] * wave[:, None]
        bg_noise = rng.uniform(0.04, 0.1, n).astype(np.float32)[:, None, None, None]
        image += bg_noise * rng.standard_normal(image.shape, dtype=np.float32)
        label = np.zeros((n, s, s), dtype=np.uint8)

        count = rng.integers(1, 5, n)
        for k in range(4):
            cls = rng.integers(1, self.num_classes, n)
            radius = rng.uniform(0.15, 0.3, n) * s
            cx, cy = rng.uniform(0, s, n), rng.uniform(0, s, n)
            # squares and triangles stand upright (a triangle points up, down, left or right)
            theta = rng.integers(0, 4, n) * (np.pi / 2)
            hole = rng.uniform(0.35, 0.55, n)
            colour = rng.uniform(0, 1, (n, 3))
            # keep each shape visible against the mean background: at least one channel
            # differs by 0.3 or more (otherwise move that image's colour half a turn away)
            close = np.abs(colour - base).max(axis=1) < 0.3
            colour[close] = (base[close] + 0.5) % 1.0
            shade = rng.uniform(-0.1, 0.1, n)

            dx, dy = xx - per_image(cx), yy - per_image(cy)
            c, sn = per_image(np.cos(theta)), per_image(np.sin(theta))
            u, v = c * dx + sn * dy, c * dy - sn * dx
            r = per_image(radius)
            dist = np.sqrt(dx * dx + dy * dy)
            disc = dist <= r
            square = np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
            # equilateral triangle of circumradius 1.1 r: inside all three edge half-planes
            triangle = np.ones_like(disc)
            for j in range(3):
                a = 2 * np.pi * j / 3
                triangle &= u * np.float32(np.cos(a)) + v * np.float32(np.sin(a)) <= 0.55 * r
            ring = disc & (dist >= per_image(hole) * r)
            kind = per_image(cls)
            mask = np.where(kind == 1, disc, np.where(kind == 2, square,
                            np.where(kind == 3, triangle, ring)))
            mask &= per_image(k < count).astype(bool)
            fill = (colour.astype(np.float32)[:, :, None, None]
                    + (per_image(shade) * u / r)[:, None])
            image = np.where(mask[:, None], fill, image)
            label = np.where(mask, cls.astype(np.uint8)[:, None, None], label)

        noise = rng.uniform(0.01, 0.04, n).astype(np.float32)[:, None, None, None]
        image += noise * rng.standard_normal(image.shape, dtype=np.float32)
        image = (np.clip(image, 0.0, 1.0) - MEAN) / SCALE
        return image.astype(np.float32), label


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: mask modes read as class indices: grey, palette (VOC), 1-bit, 16/32-bit integer
_MASK_MODES = ("L", "P", "1", "I;16", "I;16B", "I;16L", "I")


def _pil_open(owner, path):
    from PIL import Image
    try:
        return Image.open(path)
    except Exception as exc:  # Pillow raises several types for unreadable files
        fail(owner, f"cannot read {path}: {exc}", FileFormatError)


def _workers(workers):
    return max(1, min(8, os.cpu_count() or 1)) if workers is None else max(1, int(workers))


def _label_lut(label_map, owner):
    """A lookup table (65536,) mapping stored mask values to class ids, or None."""
    if not label_map:
        return None
    lut = np.arange(65536, dtype=np.int32)
    for src, dst in dict(label_map).items():
        for v, what in ((src, "source"), (dst, "target")):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v < 65536:
                fail(owner, f"label_map {what} values must be ints in [0, 65536), got {v!r}")
        lut[int(src)] = int(dst)
    return lut


def _subfolders(path):
    try:
        return sorted(d + "/" for d in os.listdir(path)
                      if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))
    except OSError:
        return []


class MaskReport:
    """What one pass over a dataset's masks found (see :func:`scan_masks`).

    Attributes: ``counts`` (int64 (K,): pixels per stored class id, after ``label_map``;
    index 255 is the ignore label), ``files_with`` (int64 (K,): masks holding each id),
    ``examples`` (id -> the first mask holding it), ``modes`` (mode -> number of masks),
    ``sizes`` (per pair (h, w)), ``errors`` (one message per problem), ``warnings``.
    """

    def __init__(self):
        self.counts = np.zeros(256, dtype=np.int64)
        self.files_with = np.zeros(256, dtype=np.int64)
        self.examples = {}
        self.modes = {}
        self.sizes = []
        self.errors = []
        self.warnings = []

    def _grow(self, n):
        if n > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(n - len(self.counts), np.int64)])
            self.files_with = np.concatenate([self.files_with,
                                              np.zeros(n - len(self.files_with), np.int64)])

    def add(self, path, counts):
        self._grow(len(counts))
        self.counts[:len(counts)] += counts
        present = np.flatnonzero(counts)
        self.files_with[present] += 1
        for v in present:
            self.examples.setdefault(int(v), path)

    def class_ids(self, ignore_label=IGNORE_LABEL):
        """The class ids present (sorted), the ignore label left out."""
        return [int(v) for v in np.flatnonzero(self.counts) if v != ignore_label]


def _scan_pair(image_path, mask_path, lut):
    """(image (h, w), (mode, counts) or None, [(exception type, message)]) for one pair."""
    from PIL import Image
    try:
        with Image.open(image_path) as im:
            image_size = (im.size[1], im.size[0])
            im.verify()
    except Exception as exc:
        return None, None, [(FileFormatError, f"cannot read {image_path}: {exc}")]
    try:
        with Image.open(mask_path) as lab:
            if lab.mode not in _MASK_MODES:
                hint = (" (an RGB colour mask must be converted to class indices first; VOC's "
                        "SegmentationClass PNGs are palette images)"
                        if lab.mode in ("RGB", "RGBA") else "")
                return image_size, None, [(DataError, (
                    f"label mask {mask_path} has mode {lab.mode}; expected a single-channel "
                    f"mode 'L' or palette 'P' PNG (or 16-bit 'I;16') whose values are class "
                    f"indices{hint}"))]
            mask_size = (lab.size[1], lab.size[0])
            mode = lab.mode
            if mask_size != image_size:
                return image_size, None, [(DataError, (
                    f"image {image_path} is {image_size[0]}x{image_size[1]} but its mask "
                    f"{mask_path} is {mask_size[0]}x{mask_size[1]}"))]
            values = _mask_array(lab)
    except Exception as exc:
        return image_size, None, [(FileFormatError, f"cannot read {mask_path}: {exc}")]
    if lut is not None:
        values = lut[values]
    counts = np.bincount(values.ravel(), minlength=256)
    return image_size, (mode, counts), []


def _mask_array(lab):
    """Class indices of an opened mask: uint8 for 8-bit and 1-bit masks, int32 for 16-bit."""
    if lab.mode == "1":
        return np.asarray(lab, dtype=np.uint8)
    if lab.mode in ("L", "P"):
        return np.asarray(lab, dtype=np.uint8)
    return np.asarray(lab).astype(np.int32)


def scan_masks(owner, pairs, num_classes=None, label_map=None, workers=None,
               ignore_label=IGNORE_LABEL):
    """Check every (image, mask) pair in one parallel pass (``workers`` threads; Pillow
    decodes outside the GIL). Returns a :class:`MaskReport`: class ids and pixel counts, the
    mask modes, each image's size, one error per problem (unreadable file, mask mode that is
    not class indices, image/mask size mismatch, value outside ``num_classes`` that is not
    ``ignore_label``) and warnings (0/255 binary masks, class ids missing below the largest)."""
    from concurrent.futures import ThreadPoolExecutor
    lut = _label_lut(label_map, owner)
    report = MaskReport()
    with ThreadPoolExecutor(_workers(workers)) as pool:
        results = list(pool.map(lambda p: _scan_pair(p[0], p[1], lut), pairs))
    for (image_path, mask_path), (image_size, found, problems) in zip(pairs, results):
        report.sizes.append(image_size)
        report.errors.extend(problems)
        if found is None:
            continue
        mode, counts = found
        report.modes[mode] = report.modes.get(mode, 0) + 1
        report.add(mask_path, counts)
        if num_classes is not None:
            bad = [v for v in np.flatnonzero(counts[num_classes:]) + num_classes
                   if v != ignore_label]
            for v in bad:
                report.errors.append((DataError, (
                    f"label mask {mask_path} holds value {v} ({counts[v]} pixels), outside "
                    f"[0, {num_classes}) and not the ignore label {ignore_label}: give more "
                    f"classes, or map the value to a class or to {ignore_label} "
                    f"(label_map / --map-label {v}={ignore_label})")))
    ids = report.class_ids(ignore_label)
    if report.counts[ignore_label] and ids == [0] and pairs:
        report.warnings.append(
            f"every mask holds only 0 and {ignore_label}: {ignore_label} is read as the ignore "
            f"label (VOC's object borders), so no pixel is foreground and training learns "
            f"nothing. If {ignore_label} marks the foreground, map it to class 1: "
            f"label_map={{{ignore_label}: 1}} (--map-label {ignore_label}=1)")
    if ids and num_classes is None:
        top = ids[-1]
        missing = sorted(set(range(top)) - set(ids))
        if missing:
            report.warnings.append(
                f"class ids {_ranges(missing)} never occur below the largest id {top} "
                f"({report.counts[top]} pixels in {report.files_with[top]} mask(s), e.g. "
                f"{report.examples[top]}), which alone makes a {top + 1}-class model; if it "
                f"is a stray value, give the number of classes and map it "
                f"(--map-label {top}={ignore_label})")
    return report


def _ranges(values):
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


class SegmentationFiles:
    """A segmentation dataset of (image file, mask file) pairs, decoded lazily: nothing is
    held in memory but the file names, so a dataset of any size fits.

    ``ds[i] -> (image float32 (3, H, W), label int64 (H, W))`` decodes image ``i`` at its own
    size (``size=(h, w)`` resizes every image: bilinear for images, nearest for masks);
    ``ds.load(i) -> (rgb uint8 (H, W, 3), mask (H, W))`` is the raw pair the training
    transforms (:mod:`convnet.transforms`) start from.

    At construction every mask is checked in one parallel pass (:func:`scan_masks`); any
    problem raises one error listing every bad file (one line each). ``num_classes`` None
    infers 1 + the largest class id below 255 (min 2); ``label_map`` ({stored value: class
    id}) remaps values first, e.g. {255: 1} for 0/255 binary masks. The pass's
    :class:`MaskReport` is ``ds.report`` (class pixel counts; ``ds.report.warnings``).
    """

    ignore_label = IGNORE_LABEL
    type_name = "SegmentationFiles"

    def __init__(self, pairs, num_classes=None, size=None, label_map=None, class_names=None,
                 name=None, workers=None, problems=()):
        self.name = name
        self.image_paths = [str(a) for a, _ in pairs]
        self.label_paths = [str(b) for _, b in pairs]
        if size is not None:
            from convnet.shapes import pair
            size = pair(size, "size", self, minimum=1)
        self.size = size
        if num_classes is not None:
            num_classes = _check_int(num_classes, "num_classes", self, 2)
        self._lut = _label_lut(label_map, self)
        self.label_map = dict(label_map or {})
        problems = list(problems)
        report = scan_masks(self, list(zip(self.image_paths, self.label_paths)), num_classes,
                            label_map, workers)
        problems.extend(report.errors)
        if problems:
            exc = problems[0][0] if all(p[0] is problems[0][0] for p in problems) else DataError
            more = f" ({len(problems)} problems)" if len(problems) > 1 else ""
            # one problem a line, on purpose (fail() would join them into one)
            raise exc(f"{where(self)}: " + "\n".join(msg for _, msg in problems) + more)
        if not self.image_paths:
            fail(self, "no images", FileFormatError)
        self.report = report
        #: (h, w) of each image as stored (before any resize)
        self.image_sizes = report.sizes
        ids = report.class_ids(self.ignore_label)
        self.num_classes = num_classes if num_classes is not None else max(
            (ids[-1] + 1) if ids else 2, 2)
        if class_names is None:
            class_names = ["background"] + [f"class{i}" for i in range(1, self.num_classes)]
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) != self.num_classes:
            fail(self, f"class_names has {len(class_names)} names for {self.num_classes} "
                       f"classes: {list(class_names)}")
        self.class_names = class_names

    def set_num_classes(self, num_classes, class_names=None):
        """Change the class count (e.g. to the one inferred over train and val together)."""
        self.num_classes = _check_int(num_classes, "num_classes", self, 2)
        if class_names is None or len(class_names) != self.num_classes:
            class_names = ["background"] + [f"class{i}" for i in range(1, self.num_classes)]
        self.class_names = tuple(class_names)

    def __len__(self):
        return len(self.image_paths)

    def _index(self, index):
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"{self.type_name} indices must be ints, got {index!r}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.type_name}: index {index} out of range for {len(self)} "
                             f"images")
        return int(index) % len(self)

    def load(self, index):
        """(rgb uint8 (H, W, 3), mask (H, W) uint8 or int32) of item ``index``, decoded now."""
        i = self._index(index)
        ip, lp = self.image_paths[i], self.label_paths[i]
        with _pil_open(self, ip) as im, _pil_open(self, lp) as lab:
            try:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
                mask = _mask_array(lab)
            except OSError as exc:
                fail(self, f"cannot read {ip} or {lp}: {exc}", FileFormatError)
        if self._lut is not None:
            mask = self._lut[mask]
        if self.size is not None:
            from convnet.transforms import resize
            rgb, mask = resize(rgb, mask, self.size)
        return rgb, mask

    def __getitem__(self, index):
        i = self._index(index)
        rgb, mask = self.load(i)
        label = mask.astype(np.int64)
        bad = (label >= self.num_classes) & (label != IGNORE_LABEL)
        if bad.any():
            fail(self, f"label mask {self.label_paths[i]} holds value {int(label[bad][0])}, "
                       f"outside [0, {self.num_classes}) and not the ignore label "
                       f"{IGNORE_LABEL}", DataError)
        return normalize_image(rgb), label

    def infer_num_classes(self):
        """1 + the largest label value below 255 over every mask (at least 2)."""
        ids = self.report.class_ids(self.ignore_label)
        return max(ids[-1] + 1 if ids else 2, 2)

    def summary(self):
        """One line per class id found: pixels and masks holding it."""
        total = max(int(self.report.counts.sum()), 1)
        lines = []
        for v in np.flatnonzero(self.report.counts):
            name = (self.class_names[v] if v < self.num_classes
                    else "ignore" if v == self.ignore_label else "?")
            lines.append(f"  {int(v):>5} {name:<14} {self.report.counts[v] / total:7.2%} of "
                         f"pixels, in {self.report.files_with[v]} of {len(self)} masks")
        return "\n".join(lines)


def _walk_images(images_dir):
    """Image files under ``images_dir`` (nested folders too), as sorted relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(images_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if os.path.splitext(f)[1].lower() in IMAGE_EXTS and not f.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, f), images_dir))
    return sorted(out)


#: names of the image and mask folders the folder layout accepts
IMAGE_DIRS = ("images", "imgs", "image")
LABEL_DIRS = ("labels", "masks", "annotations", "label", "mask")


class FolderDataset(SegmentationFiles):
    """A user's segmentation data: ``root/images/**/<stem>.png|jpg|...`` with
    ``root/labels/**/<stem>.png`` masks at the same relative path (mode "L" or "P": pixel
    value = class index, 255 = ignore; 16-bit masks too). ``masks/`` or ``annotations/`` may
    stand for ``labels/``. Nested folders are walked.

    Parameters: ``root``; ``size`` (None keeps each image's own size; (h, w) resizes);
    ``num_classes`` (None: inferred as 1 + the largest label below 255 in the masks);
    ``label_map``, ``class_names``, ``workers`` as :class:`SegmentationFiles`.

    A missing folder, an image without a mask, an image and mask of different sizes, or a mask
    of another mode are errors naming the file. Images are decoded when read, not cached.

    Example::

        ds = FolderDataset("my_data")
        image, label = ds[0]      # float32 (3, H, W), int64 (H, W)
    """

    type_name = "FolderDataset"

    def __init__(self, root, size=None, num_classes=None, label_map=None, class_names=None,
                 workers=None):
        self.root = str(root)
        self.name = self.root
        images_dir, labels_dir = self._dirs(self.root)
        rel = _walk_images(images_dir)
        if not rel:
            sub = _subfolders(images_dir)
            found = f" (it holds only the folders {', '.join(sub)})" if sub else ""
            fail(self, f"no .png or .jpg images in {images_dir}{found}", FileFormatError)
        stems = [os.path.splitext(r)[0] for r in rel]
        seen = set()
        for st in stems:
            if st in seen:
                fail(self, f"two images share the name {st!r} in {images_dir}", DataError)
            seen.add(st)
        pairs, problems = [], []
        for r, st in zip(rel, stems):
            ip, lp = os.path.join(images_dir, r), os.path.join(labels_dir, st + ".png")
            if not os.path.isfile(lp):
                problems.append((DataError, f"image {ip} has no label mask (expected {lp})"))
            else:
                pairs.append((ip, lp))
        if problems:
            more = f" ({len(problems)} problems)" if len(problems) > 1 else ""
            fail(self, "\n".join(m for _, m in problems) + more, DataError)
        super().__init__(pairs, num_classes=num_classes, size=size, label_map=label_map,
                         class_names=class_names, name=self.root, workers=workers)

    def _dirs(self, root):
        if not os.path.isdir(root):
            fail(self, f"folder {root} does not exist (expected {os.path.join(root, 'images')}"
                       f"/*.png|jpg and {os.path.join(root, 'labels')}/<same name>.png)",
                 FileFormatError)
        images = next((os.path.join(root, d) for d in IMAGE_DIRS
                       if os.path.isdir(os.path.join(root, d))), os.path.join(root, "images"))
        labels = next((os.path.join(root, d) for d in LABEL_DIRS
                       if os.path.isdir(os.path.join(root, d))), os.path.join(root, "labels"))
        for d in (images, labels):
            if not os.path.isdir(d):
                sub = _subfolders(root)
                found = (f"; {root} holds the folders {', '.join(sub)}" if sub
                         else f"; {root} holds no folders")
                fail(self, f"folder {d} does not exist (expected {images}/*.png|jpg and "
                           f"{labels}/<same name>.png, the VOC layout JPEGImages/ + "
                           f"SegmentationClass/, or a list file{found})", FileFormatError)
        return images, labels


def _voc_root(root):
    """The folder holding JPEGImages/ and SegmentationClass/ (root itself, or the one VOC20xx
    folder inside root or root/VOCdevkit), or None."""
    def is_voc(d):
        return (os.path.isdir(os.path.join(d, "JPEGImages"))
                and os.path.isdir(os.path.join(d, "SegmentationClass")))
    if is_voc(root):
        return root
    for base in (root, os.path.join(root, "VOCdevkit")):
        found = [os.path.join(base, d) for d in _subfolders(base)
                 if is_voc(os.path.join(base, d.rstrip("/")))]
        if len(found) == 1:
            return found[0].rstrip("/")
    return None


class VOCDataset(SegmentationFiles):
    """PASCAL VOC's layout: ``root/JPEGImages/<id>.jpg``, ``root/SegmentationClass/<id>.png``
    (palette masks, 255 = object borders, ignored), ``root/ImageSets/Segmentation/<split>.txt``
    (one id a line). ``root`` may also be a VOCdevkit folder holding one VOC20xx folder.
    ``split`` is a split name (``"train"``, ``"val"``, ``"trainval"``) or the path of a split
    file; without split files every image with a mask is listed (``split=None``). VOC's 21
    class names are used when ``num_classes`` is 21 (or inferred so)."""

    type_name = "VOCDataset"
    VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
                   "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
                   "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

    def __init__(self, root, split="train", size=None, num_classes=None, label_map=None,
                 class_names=None, workers=None):
        self.name = str(root)
        voc = _voc_root(str(root))
        if voc is None:
            fail(self, f"{root} is not a VOC folder (expected JPEGImages/ and "
                       f"SegmentationClass/ in it or in VOCdevkit/VOC20xx/)", FileFormatError)
        self.root = voc
        self.split = split
        ids = self._ids(voc, split)
        pairs, problems = [], []
        for i in ids:
            ip = next((os.path.join(voc, "JPEGImages", i + e) for e in (".jpg", ".jpeg", ".png")
                       if os.path.isfile(os.path.join(voc, "JPEGImages", i + e))), None)
            lp = os.path.join(voc, "SegmentationClass", i + ".png")
            if ip is None:
                problems.append((DataError, f"split id {i!r} has no image "
                                            f"{os.path.join(voc, 'JPEGImages', i)}.jpg"))
            elif not os.path.isfile(lp):
                problems.append((DataError, f"image {ip} has no label mask (expected {lp})"))
            else:
                pairs.append((ip, lp))
        if not pairs and not problems:
            fail(self, f"split {split!r} lists no images", FileFormatError)
        super().__init__(pairs, num_classes=num_classes, size=size, label_map=label_map,
                         class_names=class_names, name=f"{voc} {split}", workers=workers,
                         problems=problems)
        if class_names is None and self.num_classes == len(self.VOC_CLASSES):
            self.class_names = self.VOC_CLASSES

    def _ids(self, voc, split):
        if split is None:
            return sorted(os.path.splitext(f)[0] for f in os.listdir(
                os.path.join(voc, "SegmentationClass")) if f.endswith(".png"))
        path = split if os.path.isfile(str(split)) else os.path.join(
            voc, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(path):
            fail(self, f"split file {path} does not exist", FileFormatError)
        with open(path) as f:
            return [line.split()[0] for line in f if line.strip()]

    @staticmethod
    def has_split(root, split):
        voc = _voc_root(str(root))
        return voc is not None and os.path.isfile(
            os.path.join(voc, "ImageSets", "Segmentation", f"{split}.txt"))


class ListDataset(SegmentationFiles):
    """Pairs listed in a text file, one ``<image> <mask>`` a line (whitespace or a comma
    between; paths relative to the file's folder; ``#`` starts a comment)."""

    type_name = "ListDataset"

    def __init__(self, path, size=None, num_classes=None, label_map=None, class_names=None,
                 workers=None):
        self.name = str(path)
        base = os.path.dirname(os.path.abspath(str(path)))
        pairs, problems = [], []
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError as exc:
            fail(self, f"cannot read the list file: {exc}", FileFormatError)
        for n, line in enumerate(lines, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            if len(parts) != 2:
                problems.append((FileFormatError, f"{path}:{n}: expected '<image> <mask>', "
                                                  f"got {line!r}"))
                continue
            ip, lp = (os.path.join(base, q) for q in parts)
            missing = [q for q in (ip, lp) if not os.path.isfile(q)]
            if missing:
                problems.append((DataError, f"{path}:{n}: no such file {missing[0]}"))
            else:
                pairs.append((ip, lp))
        if not pairs and not problems:
            fail(self, "the list file names no images", FileFormatError)
        super().__init__(pairs, num_classes=num_classes, size=size, label_map=label_map,
                         class_names=class_names, name=str(path), workers=workers,
                         problems=problems)


def open_dataset(path, split="train", **kwargs):
    """The dataset at ``path`` in whichever layout it has: a list file, the VOC layout
    (``split`` names its split file), or the folder layout (``images/`` + ``labels/``).
    ``kwargs`` go to the dataset (size, num_classes, label_map, class_names, workers)."""
    path = str(path)
    if os.path.isfile(path):
        return ListDataset(path, **kwargs)
    if os.path.isdir(path) and _voc_root(path) is not None:
        return VOCDataset(path, split=split, **kwargs)
    return FolderDataset(path, **kwargs)


def load_class_names(spec):
    """Class names from a comma-separated string or a file with one name a line."""
    if spec is None:
        return None
    if os.path.isfile(spec):
        with open(spec) as f:
            return [line.strip() for line in f if line.strip()]
    return [s.strip() for s in spec.split(",") if s.strip()]


class Subset:
    """The images ``indices`` of ``dataset`` (e.g. a validation split held out of a folder),
    with the dataset's ``num_classes``, ``class_names`` and ``ignore_label``."""

    type_name = "Subset"

    def __init__(self, dataset, indices):
        self.name = None
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        n = len(dataset)
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            fail(self, f"index {bad[0]} out of range for a dataset of {n} images")
        for attr in ("num_classes", "class_names", "ignore_label"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[self.indices[index]]

    def load(self, index):
        """The raw (rgb, mask) pair of item ``index`` (see :meth:`SegmentationFiles.load`)."""
        return self.dataset.load(self.indices[index])


def split_range(total, index, count):
    """(lo, hi): part ``index`` of ``count`` near-equal consecutive parts of range(total)
    (the first ``total % count`` parts have one more element)."""
    return index * total // count, (index + 1) * total // count


class BatchIterator:
    """Endless shuffled mini-batches from a dataset (a :class:`SyntheticShapes`,
    :class:`FolderDataset` or anything with ``len`` and ``ds[i] -> (image, label)``).

    ``next_batch()`` returns ``{"data": float32 (N, 3, H, W), "label": int64 (N, H, W)}``.
    Each epoch visits every image once in an order drawn from the iterator's generator (seeded
    by ``seed``); a batch that crosses an epoch boundary continues into the next epoch.
    ``augment=True`` flips each image and its label left-right with probability 1/2.
    ``get_state()`` / ``set_state()`` capture the position, the epoch's order and the
    generator as plain JSON-serialisable data.

    Example::

        batches = BatchIterator(SyntheticShapes("train"), batch_size=16, seed=0)
        batch = batches.next_batch()      # {"data": (16, 3, 64, 64), "label": (16, 64, 64)}
    """

    type_name = "BatchIterator"

    def __init__(self, dataset, batch_size, shuffle=True, seed=0, augment=False):
        self.name = None
        self.dataset = dataset
        if len(dataset) == 0:
            fail(self, "dataset is empty")
        self.batch_size = _check_int(batch_size, "batch_size", self, 1)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self._rng = np.random.default_rng(_check_int(seed, "seed", self, 0))
        self.epoch = 0
        self.position = 0
        self._order = self._new_order()

    def _new_order(self):
        n = len(self.dataset)
        return self._rng.permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    def next_indices(self):
        """The dataset indices of the next batch (advances the iterator)."""
        out = []
        while len(out) < self.batch_size:
            take = min(self.batch_size - len(out), len(self._order) - self.position)
            out.extend(int(i) for i in self._order[self.position:self.position + take])
            self.position += take
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._new_order()
        return out

    def next_batch(self, part=None):
        """The next batch; ``part=(index, count)`` loads only that part of it (see
        :func:`split_range`): data-parallel ranks each advance the same iterator and read
        their own images, and the flips are drawn for the whole batch."""
        indices = self.next_indices()
        flip = self._rng.random(len(indices)) < 0.5 if self.augment else None
        if part is not None:
            lo, hi = split_range(len(indices), *part)
            indices = indices[lo:hi]
            flip = None if flip is None else flip[lo:hi]
        if hasattr(self.dataset, "get_batch"):
            data, label = self.dataset.get_batch(indices)
        else:
            items = [self.dataset[i] for i in indices]
            shapes = {item[0].shape for item in items}
            if len(shapes) > 1:
                fail(self, f"images of different sizes {sorted(shapes)} cannot share a batch; "
                           f"give the dataset a fixed size", DataError)
            data = np.stack([item[0] for item in items])
            label = np.stack([item[1] for item in items])
        data = np.array(data, dtype=np.float32, order="C")
        label = np.array(label, dtype=np.int64, order="C")
        if flip is not None:
            data[flip] = data[flip][..., ::-1]
            label[flip] = label[flip][..., ::-1]
        return {"data": data, "label": label}

    def get_state(self):
        """Position, epoch order and generator state, as JSON-serialisable data."""
        return {"epoch": int(self.epoch), "position": int(self.position),
                "order": [int(i) for i in self._order],
                "rng": self._rng.bit_generator.state}

    def set_state(self, state):
        """Restore what :meth:`get_state` returned (e.g. after a JSON round trip)."""
        try:
            state = json.loads(json.dumps(state))
            order = np.asarray(state["order"], dtype=np.int64)
            epoch, position, rng_state = int(state["epoch"]), int(state["position"]), state["rng"]
        except (KeyError, TypeError, ValueError) as exc:
            fail(self, f"state must come from get_state() (keys epoch, position, order, rng): "
                       f"{exc}", ConfigError)
        n = len(self.dataset)
        if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
            fail(self, f"state order is not a permutation of the dataset's {n} indices "
                       f"(the dataset changed since the state was saved?)", ConfigError)
        if not 0 <= position < n:
            fail(self, f"state position {position} out of range for {n} images", ConfigError)
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError) as exc:
            fail(self, f"state rng is not a PCG64 generator state: {exc}", ConfigError)
        self._rng, self._order = rng, order
        self.epoch, self.position = epoch, position


class SegmentationLoader:
    """Training batches from a :class:`SegmentationFiles` dataset, decoded and augmented in
    background threads while the network trains.

    Each item: ``dataset.load(i)`` (the decode), then ``transform(rgb, mask, rng)`` (e.g.
    :class:`convnet.transforms.Augment`: random scale, crop with mean/ignore padding, flip).
    Items of a batch that still differ in size (no crop) are padded at the bottom and right to
    the batch's largest size rounded up to ``multiple`` (mean and ignore label). The order is a
    :class:`BatchIterator`'s (shuffled each epoch from ``seed``); the random draws of batch
    ``b`` item ``k`` come from ``default_rng([seed, b, k])``, so a batch is the same whichever
    thread builds it and however many run. ``workers`` threads keep ``prefetch`` batches
    ready; memory holds those batches, never the dataset.

    ``get_state()`` / ``set_state()`` capture the position of the next batch the caller will
    receive (batches decoded ahead are rebuilt after a restore), so resuming is exact.
    """

    type_name = "SegmentationLoader"

    def __init__(self, dataset, batch_size, transform, seed=0, workers=2, prefetch=2,
                 multiple=1):
        self.name = None
        self.dataset = dataset
        self.transform = transform
        self.seed = _check_int(seed, "seed", self, 0)
        self.workers = _check_int(workers, "workers", self, 1)
        self.prefetch = _check_int(prefetch, "prefetch", self, 1)
        self.multiple = _check_int(multiple, "multiple", self, 1)
        self.batch_size = _check_int(batch_size, "batch_size", self, 1)
        self._order = BatchIterator(dataset, batch_size, shuffle=True, seed=self.seed)
        self._batches = 0
        self._pool = None
        self._pending = []      # [(state before the batch, batch number, futures)]

    def _item(self, index, batch, k):
        rgb, mask = self.dataset.load(index)
        return self.transform(rgb, mask, np.random.default_rng([self.seed, batch, k]))

    def _submit(self):
        from concurrent.futures import ThreadPoolExecutor
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="convnet-data")
        state = self._order_state()
        indices = self._order.next_indices()
        b = self._batches
        self._batches += 1
        futures = [self._pool.submit(self._item, i, b, k) for k, i in enumerate(indices)]
        self._pending.append((state, futures))

    def _order_state(self):
        return {"order": self._order.get_state(), "batches": self._batches}

    def next_batch(self):
        while len(self._pending) < self.prefetch:
            self._submit()
        _, futures = self._pending.pop(0)
        self._submit()
        items = [f.result() for f in futures]
        return collate(items, self.multiple, getattr(self.dataset, "ignore_label",
                                                     IGNORE_LABEL))

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    def get_state(self):
        """The position of the next batch :meth:`next_batch` returns (JSON-serialisable)."""
        return self._pending[0][0] if self._pending else self._order_state()

    def set_state(self, state):
        try:
            order, batches = state["order"], int(state["batches"])
        except (KeyError, TypeError, ValueError) as exc:
            fail(self, f"state must come from get_state() (keys order, batches): {exc}",
                 ConfigError)
        for _, futures in self._pending:
            for f in futures:
                f.cancel()
        self._pending = []
        self._order.set_state(order)
        self._batches = batches

    def close(self):
        """Stop the worker threads (pending batches are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending = []


def collate(items, multiple=1, ignore_label=IGNORE_LABEL):
    """{"data": float32 (N, 3, H, W), "label": int64 (N, H, W)} from (image, label) items,
    padding each to the largest H x W (rounded up to ``multiple``) with 0 (the normalised mean)
    and ``ignore_label``."""
    from convnet.transforms import pad_to, padded_size
    h = max(x.shape[1] for x, _ in items)
    w = max(x.shape[2] for x, _ in items)
    size = padded_size(h, w, multiple)
    data = np.empty((len(items), 3) + size, dtype=np.float32)
    label = np.empty((len(items),) + size, dtype=np.int64)
    for k, (x, y) in enumerate(items):
        data[k], label[k] = pad_to(x, y, size, ignore_label)
    return {"data": data, "label": label}
