"""Segmentation data: an embedded synthetic dataset, a folder loader and a batch iterator.

- :class:`SyntheticShapes`: deterministic synthetic scenes (no download): discs, squares,
  triangles and rings of random colours, sizes and orientations, overlapping, on textured noisy
  backgrounds. Fixed train / val splits drawn from separate random streams.
- :class:`FolderDataset`: a user's own ``root/images/*.png|jpg`` with ``root/labels/<stem>.png``
  label masks (mode "L" or "P", 255 = ignore), read through Pillow.
- :class:`BatchIterator`: shuffled mini-batches ``{"data", "label"}`` with a JSON-serialisable
  state, so a run resumed from a snapshot sees exactly the batches it would have seen.

Every dataset returns ``ds[i] -> (image, label)``: image float32 (3, H, W) scaled as
``(x - 0.5) / 0.25`` from [0, 1] (roughly zero mean, unit scale), label int64 (H, W).
"""

import json
import os

import numpy as np

from convnet.errors import ConfigError, DataError, FileFormatError, fail

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
        chunks = [self._render_chunk(c) for c in range(-(-self.num_images // _CHUNK))]
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


def _list_dir(path, exts):
    return sorted(f for f in os.listdir(path)
                  if os.path.splitext(f)[1].lower() in exts and not f.startswith("."))


class FolderDataset:
    """A user's segmentation data: ``root/images/<stem>.png|jpg|jpeg`` and
    ``root/labels/<stem>.png`` (mode "L" or "P": pixel value = class index, 255 = ignore).

    Parameters: ``root`` (the folder), ``size`` (None keeps each image's own size; an int or
    (h, w) resizes images bilinearly and masks by nearest neighbour, which batching needs
    when images differ in size), ``num_classes`` (None: inferred as 1 + the largest label
    below 255 in the masks).

    A missing folder, an image without a mask, an image and mask of different sizes, or a
    mask of another mode are errors naming the file. Items are read once, then cached.

    Example::

        ds = FolderDataset("my_data", size=(128, 128))
        image, label = ds[0]      # float32 (3, 128, 128), int64 (128, 128)
    """

    ignore_label = IGNORE_LABEL
    type_name = "FolderDataset"

    def __init__(self, root, size=None, num_classes=None):
        self.root = str(root)
        self.name = self.root
        images_dir = os.path.join(self.root, "images")
        labels_dir = os.path.join(self.root, "labels")
        for d in (self.root, images_dir, labels_dir):
            if not os.path.isdir(d):
                fail(self, f"folder {d} does not exist (expected {images_dir}/*.png|jpg and "
                           f"{labels_dir}/<same name>.png)", FileFormatError)
        if size is not None:
            from convnet.shapes import pair
            size = pair(size, "size", self, minimum=1)
        self.size = size
        names = _list_dir(images_dir, (".png", ".jpg", ".jpeg"))
        if not names:
            fail(self, f"no .png or .jpg images in {images_dir}", FileFormatError)
        stems = [os.path.splitext(n)[0] for n in names]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            fail(self, f"two images share the name {dup!r} in {images_dir}", DataError)
        self.image_paths = [os.path.join(images_dir, n) for n in names]
        self.label_paths = [os.path.join(labels_dir, s + ".png") for s in stems]
        #: (h, w) of each image as stored (before any resize)
        self.image_sizes = []
        for ip, lp in zip(self.image_paths, self.label_paths):
            if not os.path.isfile(lp):
                fail(self, f"image {ip} has no label mask (expected {lp})", DataError)
            self.image_sizes.append(self._check_pair(ip, lp))
        self._cache = {}
        self.num_classes = (self.infer_num_classes() if num_classes is None
                            else _check_int(num_classes, "num_classes", self, 2))
        self.class_names = tuple(f"class{i}" for i in range(self.num_classes))

    def _open(self, path):
        from PIL import Image
        try:
            return Image.open(path)
        except Exception as exc:  # Pillow raises several types for unreadable files
            fail(self, f"cannot read {path}: {exc}", FileFormatError)

    def _check_pair(self, ip, lp):
        with self._open(ip) as im, self._open(lp) as lab:
            if lab.mode not in ("L", "P"):
                fail(self, f"label mask {lp} has mode {lab.mode}; expected a single-channel "
                           f"mode 'L' or palette 'P' PNG whose values are class indices",
                     DataError)
            if im.size != lab.size:
                fail(self, f"image {ip} is {im.size[1]}x{im.size[0]} but its mask {lp} is "
                           f"{lab.size[1]}x{lab.size[0]}", DataError)
            return im.size[1], im.size[0]

    def __len__(self):
        return len(self.image_paths)

    def _load(self, i):
        from PIL import Image
        if i not in self._cache:
            ip, lp = self.image_paths[i], self.label_paths[i]
            try:
                with Image.open(ip) as im:
                    im = im.convert("RGB")
                    if self.size is not None and im.size != self.size[::-1]:
                        im = im.resize(self.size[::-1], Image.BILINEAR)
                    rgb = np.asarray(im, dtype=np.uint8)
                with Image.open(lp) as lab:
                    if self.size is not None and lab.size != self.size[::-1]:
                        lab = lab.resize(self.size[::-1], Image.NEAREST)
                    label = np.asarray(lab, dtype=np.uint8)
            except OSError as exc:
                fail(self, f"cannot read {ip} or {lp}: {exc}", FileFormatError)
            self._cache[i] = (normalize_image(rgb), label)
        return self._cache[i]

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"FolderDataset indices must be ints, got {index!r}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"FolderDataset: index {index} out of range for {len(self)} images")
        image, label = self._load(int(index) % len(self))
        label = label.astype(np.int64)
        if hasattr(self, "num_classes"):
            bad = (label >= self.num_classes) & (label != IGNORE_LABEL)
            if bad.any():
                value = int(label[bad][0])
                fail(self, f"label mask {self.label_paths[int(index) % len(self)]} holds "
                           f"value {value}, outside [0, {self.num_classes}) and not the ignore "
                           f"label {IGNORE_LABEL}", DataError)
        return image.copy(), label

    def infer_num_classes(self):
        """1 + the largest label value below 255 over every mask."""
        top = 0
        for i in range(len(self)):
            label = self._load(i)[1]
            valid = label[label != IGNORE_LABEL]
            if valid.size:
                top = max(top, int(valid.max()))
        return max(top + 1, 2)


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
