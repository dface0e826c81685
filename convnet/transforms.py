"""Training augmentation and whole-image padding for segmentation (image, mask) pairs.

Images are uint8 (H, W, 3) RGB and masks integer (H, W) class maps, as
:class:`convnet.data.SegmentationFiles` decodes them; the results are the float32 (3, H, W)
networks read (``convnet.data.normalize_image``) and int64 (H, W) labels.

- :func:`random_scale`: resize by a factor drawn uniformly from ``scale_range`` (bilinear for
  the image, nearest for the mask, so no new class ids appear).
- :func:`random_crop`: a crop of ``crop`` (h, w) at a random offset; a side smaller than the
  crop is padded at random on both ends with the dataset mean (0 after normalisation) and the
  ignore label, so padding never counts in the loss.
- :func:`pad_to_multiple`: pad the bottom and right to the network's multiple (mean and
  ignore label) for whole-image validation; :func:`crop_back` undoes it on a prediction.

Every random choice comes from the ``numpy.random.Generator`` passed in, so a batch is the same
whichever worker thread builds it.
"""

import numpy as np

from convnet.errors import ConfigError

#: the value a padded image pixel gets before normalisation: the mean, 0 after it
PAD_VALUE = 0.5


def _pil():
    from PIL import Image
    return Image


def _mask_image(mask):
    """A Pillow image of a class map: mode L for 8-bit ids, 32-bit I otherwise (Pillow's
    NEAREST resize supports both)."""
    Image = _pil()
    if mask.dtype == np.uint8:
        return Image.fromarray(mask)
    return Image.fromarray(mask.astype(np.int32))


def resize(rgb, mask, size, box=None):
    """(rgb, mask) resized to ``size`` (h, w): bilinear image, nearest-neighbour mask (so no
    new class ids appear). ``box`` (x0, y0, x1, y1), in source pixels, resizes only that
    region (Pillow's ``resize(box=)``)."""
    Image = _pil()
    h, w = int(size[0]), int(size[1])
    if rgb.shape[:2] == (h, w) and box is None:
        return rgb, mask
    img = Image.fromarray(rgb).resize((w, h), Image.BILINEAR, box=box)
    lab = _mask_image(mask).resize((w, h), Image.NEAREST, box=box)
    return np.asarray(img), np.asarray(lab).astype(mask.dtype)


def scaled_crop(rgb, mask, scale, crop, rng, ignore_label):
    """:func:`random_crop` of the image scaled by ``scale``, resizing only the pixels the crop
    keeps (a crop of a 2x upscaled photo resizes a quarter of it, not all of it)."""
    from convnet.data import normalize_image
    ch, cw = crop
    h0, w0 = mask.shape
    h, w = max(1, int(round(h0 * scale))), max(1, int(round(w0 * scale)))
    y0 = int(rng.integers(min(0, h - ch), max(0, h - ch) + 1))
    x0 = int(rng.integers(min(0, w - cw), max(0, w - cw) + 1))
    ys, ye, xs, xe = max(y0, 0), min(y0 + ch, h), max(x0, 0), min(x0 + cw, w)
    sy, sx = h0 / h, w0 / w
    part_rgb, part_mask = resize(rgb, mask, (ye - ys, xe - xs),
                                 box=(xs * sx, ys * sy, xe * sx, ye * sy))
    image = np.zeros((3, ch, cw), dtype=np.float32)
    label = np.full((ch, cw), ignore_label, dtype=np.int64)
    top, left = ys - y0, xs - x0
    image[:, top:top + ye - ys, left:left + xe - xs] = normalize_image(part_rgb)
    label[top:top + ye - ys, left:left + xe - xs] = part_mask
    return image, label


def random_scale(rgb, mask, scale_range, rng):
    """Resize both by one factor drawn uniformly from ``scale_range`` (lo, hi)."""
    lo, hi = scale_range
    if lo == hi == 1.0:
        return rgb, mask
    s = rng.uniform(lo, hi)
    h, w = rgb.shape[:2]
    return resize(rgb, mask, (max(1, int(round(h * s))), max(1, int(round(w * s)))))


def pad(x, top, bottom, left, right, value):
    """``x`` (H, W[, C]) padded with a constant on each side."""
    widths = ((top, bottom), (left, right)) + ((0, 0),) * (x.ndim - 2)
    return np.pad(x, widths, mode="constant", constant_values=value)


def random_crop(rgb, mask, crop, rng, ignore_label):
    """A random ``crop`` (h, w) window of a uint8 image (H, W, 3) and its mask (H, W), as a
    normalised float32 (3, h, w) image and an int64 (h, w) label. A side smaller than the crop
    is padded (image with the mean, 0 after normalisation; label with ``ignore_label``), the
    image placed at a random offset inside it. Only the window is normalised."""
    from convnet.data import normalize_image
    ch, cw = crop
    h, w = mask.shape
    y0 = int(rng.integers(min(0, h - ch), max(0, h - ch) + 1))
    x0 = int(rng.integers(min(0, w - cw), max(0, w - cw) + 1))
    ys, ye, xs, xe = max(y0, 0), min(y0 + ch, h), max(x0, 0), min(x0 + cw, w)
    image = np.zeros((3, ch, cw), dtype=np.float32)
    label = np.full((ch, cw), ignore_label, dtype=np.int64)
    top, left = ys - y0, xs - x0
    image[:, top:top + ye - ys, left:left + xe - xs] = normalize_image(rgb[ys:ye, xs:xe])
    label[top:top + ye - ys, left:left + xe - xs] = mask[ys:ye, xs:xe]
    return image, label


def pad_to(image, label, size, ignore_label):
    """Pad a normalised image (C, H, W) and its label (H, W) at the bottom and right to
    ``size`` (h, w) >= (H, W): image with 0 (the mean), label with ``ignore_label``."""
    _, h, w = image.shape
    ph, pw = int(size[0]) - h, int(size[1]) - w
    if ph < 0 or pw < 0:
        raise ConfigError(f"pad_to: image {h}x{w} is larger than the target {size[0]}x{size[1]}")
    if ph == pw == 0:
        return image, label
    return (np.pad(image, ((0, 0), (0, ph), (0, pw))),
            None if label is None else pad(label, 0, ph, 0, pw, ignore_label))


def padded_size(h, w, multiple):
    """(h, w) rounded up to multiples of ``multiple``."""
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def pad_to_multiple(image, label, multiple, ignore_label):
    """:func:`pad_to` the next multiple of ``multiple`` (the network's input multiple)."""
    return pad_to(image, label, padded_size(image.shape[1], image.shape[2], multiple),
                  ignore_label)


def crop_back(prediction, size):
    """A prediction (..., H', W') cropped back to the image's ``size`` (h, w)."""
    return prediction[..., :size[0], :size[1]]


class Augment:
    """The training transform: random scale, normalise, random crop (with padding), flip.

    Parameters: ``crop`` (h, w) or None (keep the whole, scaled image), ``scale_range``
    (lo, hi) (1, 1 switches scaling off), ``flip`` (left-right with probability 1/2),
    ``ignore_label``.
    """

    def __init__(self, crop=None, scale_range=(1.0, 1.0), flip=True, ignore_label=255):
        if crop is not None:
            crop = (int(crop[0]), int(crop[1]))
            if min(crop) < 1:
                raise ConfigError(f"Augment: crop must be positive, got {crop}")
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not (0 < lo <= hi):
            raise ConfigError(f"Augment: scale_range must be 0 < lo <= hi, got {scale_range}")
        self.crop, self.scale_range, self.flip = crop, (lo, hi), bool(flip)
        self.ignore_label = ignore_label

    def __call__(self, rgb, mask, rng):
        """uint8 (H, W, 3), int (H, W) -> float32 (3, h, w), int64 (h, w)."""
        from convnet.data import normalize_image
        lo, hi = self.scale_range
        if self.crop is not None and (lo, hi) != (1.0, 1.0):
            image, label = scaled_crop(rgb, mask, rng.uniform(lo, hi), self.crop, rng,
                                       self.ignore_label)
        elif self.crop is not None:
            image, label = random_crop(rgb, mask, self.crop, rng, self.ignore_label)
        else:
            rgb, mask = random_scale(rgb, mask, self.scale_range, rng)
            image, label = normalize_image(rgb), mask.astype(np.int64)
        if self.flip and rng.random() < 0.5:
            image, label = image[:, :, ::-1], label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)
