"""A user's image files: folder / VOC / list layouts, lazy decoding, the one-pass mask check,
the training transforms and the background loader. Tiny images only."""

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from convnet.data import (FolderDataset, ListDataset, SegmentationLoader,  # noqa: E402
                          VOCDataset, collate, normalize_image, open_dataset, scan_masks)
from convnet.errors import DataError, FileFormatError  # noqa: E402
from convnet.transforms import (Augment, crop_back, pad_to_multiple,  # noqa: E402
                                random_crop)

SIZES = [(13, 17), (20, 9), (8, 8), (16, 24)]


def save_pair(image_path, mask_path, h, w, rng, values=(0, 1, 2, 255), mode="P"):
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image_path)
    mask = rng.choice(np.array(values, dtype=np.uint16 if max(values) > 255 else np.uint8),
                      size=(h, w))
    if mode == "P":
        img = Image.frombytes("P", (w, h), mask.tobytes())
        img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
    elif mode == "I;16":
        img = Image.fromarray(mask.astype(np.uint16))
    else:
        img = Image.fromarray(mask).convert(mode)
    img.save(mask_path)
    return rgb, mask


def write_voc(root, sizes=SIZES, val=(3,)):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        save_pair(root / "JPEGImages" / f"{i:03d}.png", root / "SegmentationClass" / f"{i:03d}.png",
                  h, w, rng)
    split = root / "ImageSets" / "Segmentation"
    split.mkdir(parents=True)
    (split / "train.txt").write_text("".join(f"{i:03d}\n" for i in range(len(sizes))
                                             if i not in val))
    (split / "val.txt").write_text("".join(f"{i:03d}\n" for i in val))
    return root


def write_nested(root, sizes=SIZES, **kwargs):
    rng = np.random.default_rng(1)
    pairs = []
    for i, (h, w) in enumerate(sizes):
        sub = "a" if i % 2 else "b/c"
        pairs.append(save_pair(root / "images" / sub / f"p{i}.png",
                               root / "labels" / sub / f"p{i}.png", h, w, rng, **kwargs))
    return root, pairs


def test_voc_layout_reads_its_split_files(tmp_path):
    root = write_voc(tmp_path / "VOCdevkit" / "VOC2012")
    train = open_dataset(tmp_path, split="train")      # found inside VOCdevkit/VOC2012
    val = open_dataset(tmp_path, split="val")
    assert isinstance(train, VOCDataset) and len(train) == 3 and len(val) == 1
    assert train.num_classes == 3 and train.report.modes == {"P": 3}
    image, label = val[0]
    assert image.shape == (3, 16, 24) and label.shape == (16, 24)
    np.testing.assert_array_equal(label, np.asarray(Image.open(
        root / "SegmentationClass" / "003.png")))
    assert VOCDataset.has_split(tmp_path, "val") and not VOCDataset.has_split(tmp_path, "test")


def test_nested_folder_layout_pairs_masks_by_relative_path(tmp_path):
    root, pairs = write_nested(tmp_path / "d")
    ds = open_dataset(root)
    assert isinstance(ds, FolderDataset) and len(ds) == 4
    assert sorted(ds.image_sizes) == sorted(SIZES)
    for i in range(len(ds)):
        rgb, mask = ds.load(i)
        name = ds.image_paths[i].rsplit("/p", 1)[1].split(".")[0]
        ref_rgb, ref_mask = pairs[int(name)]
        np.testing.assert_array_equal(rgb, ref_rgb)
        np.testing.assert_array_equal(mask, ref_mask)
        assert ds.label_paths[i].endswith(ds.image_paths[i].split("images", 1)[1])


def test_list_file_pairs_relative_to_the_file(tmp_path):
    root, pairs = write_nested(tmp_path / "d")
    lst = tmp_path / "pairs.txt"
    lst.write_text("# image mask\nd/images/a/p1.png d/labels/a/p1.png\n\n"
                   "d/images/b/c/p0.png, d/labels/b/c/p0.png\n")
    ds = open_dataset(lst)
    assert isinstance(ds, ListDataset) and len(ds) == 2
    np.testing.assert_array_equal(ds.load(1)[1], pairs[0][1])
    lst.write_text("d/images/a/p1.png\nd/images/a/p9.png d/labels/a/p9.png\n")
    with pytest.raises((DataError, FileFormatError), match=r"pairs.txt:1: expected "
                                                          r"'<image> <mask>'(.|\n)*pairs.txt:2"):
        ListDataset(lst)


def test_items_are_decoded_lazily_from_disk(tmp_path):
    root, _ = write_nested(tmp_path / "d")
    ds = FolderDataset(root)
    path = ds.image_paths[0]
    new = np.full(np.asarray(Image.open(path)).shape, 77, np.uint8)
    Image.fromarray(new).save(path)
    np.testing.assert_array_equal(ds.load(0)[0], new)      # nothing was cached
    assert not any(isinstance(v, (dict, list)) and v and isinstance(
        next(iter(v.values() if isinstance(v, dict) else v)), np.ndarray)
        for v in vars(ds).values())


def test_every_mask_problem_is_reported_at_once(tmp_path):
    root, _ = write_nested(tmp_path / "d")
    Image.fromarray(np.zeros((13, 17, 3), np.uint8)).save(root / "labels" / "b/c/p0.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "labels" / "a/p1.png")
    m = np.zeros((16, 24), np.uint8)
    m[0, 0] = 7
    Image.fromarray(m).save(root / "labels" / "a/p3.png")
    with pytest.raises(DataError) as err:
        FolderDataset(root, num_classes=3)
    lines = str(err.value).splitlines()
    assert len(lines) == 3, lines
    text = str(err.value)
    assert "p0.png has mode RGB" in text and "converted to class indices" in text
    assert "p1.png is 20x9 but its mask" in text and "is 5x5" in text
    assert "p3.png holds value 7 (1 pixels), outside [0, 3)" in text and "7=255" in text


def test_nested_images_without_a_layout_name_the_subfolders(tmp_path):
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    (tmp_path / "photos" / "dogs").mkdir()
    with pytest.raises(FileFormatError, match=r"holds the folders cats/, dogs/"):
        open_dataset(tmp_path / "photos")


def test_binary_0_255_masks_warn_and_can_be_mapped(tmp_path):
    root, _ = write_nested(tmp_path / "d", values=(0, 255), mode="L")
    ds = FolderDataset(root)
    assert any("only 0 and 255" in w and "255=1" in w for w in ds.report.warnings)
    mapped = FolderDataset(root, label_map={255: 1})
    assert mapped.num_classes == 2 and not mapped.report.warnings
    assert set(np.unique(mapped[0][1])) == {0, 1}


def test_a_stray_large_id_warns_with_the_file(tmp_path):
    root, _ = write_nested(tmp_path / "d", values=(0, 1), mode="L")
    m = np.asarray(Image.open(root / "labels" / "a" / "p1.png")).copy()
    m[2, 3] = 20
    Image.fromarray(m).save(root / "labels" / "a" / "p1.png")
    ds = FolderDataset(root)
    assert ds.num_classes == 21
    (warning,) = ds.report.warnings
    assert "class ids 2-19 never occur" in warning and "1 pixels in 1 mask" in warning
    assert "p1.png" in warning


def test_sixteen_bit_masks_are_class_indices(tmp_path):
    root, pairs = write_nested(tmp_path / "d", values=(0, 1, 300), mode="I;16")
    ds = FolderDataset(root, num_classes=301)
    assert set(ds.report.modes) <= {"I;16", "I"}
    assert ds.report.counts[300] > 0
    i = [k for k, p in enumerate(ds.image_paths) if p.endswith("p2.png")][0]
    np.testing.assert_array_equal(ds.load(i)[1], pairs[2][1].astype(np.int32))


def test_scan_runs_in_parallel_threads_with_the_same_result(tmp_path):
    root, _ = write_nested(tmp_path / "d")
    ds = FolderDataset(root)
    pairs = list(zip(ds.image_paths, ds.label_paths))
    one, four = scan_masks("t", pairs, workers=1), scan_masks("t", pairs, workers=4)
    np.testing.assert_array_equal(one.counts, four.counts)
    assert one.sizes == four.sizes
    total = sum(h * w for h, w in SIZES)
    assert one.counts.sum() == total


# ------------------------------------------------------------------ transforms

def test_random_crop_is_the_source_window_or_pads_with_mean_and_ignore():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (10, 7, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (10, 7))
    image, label = random_crop(rgb, mask, (4, 5), np.random.default_rng(3), 255)
    full = normalize_image(rgb)
    hits = [(y, x) for y in range(7) for x in range(3)
            if np.array_equal(full[:, y:y + 4, x:x + 5], image)
            and np.array_equal(mask[y:y + 4, x:x + 5], label)]
    assert len(hits) >= 1
    image, label = random_crop(rgb, mask, (14, 9), np.random.default_rng(4), 255)
    assert image.shape == (3, 14, 9) and label.shape == (14, 9)
    inside = label != 255
    assert inside.sum() == 70                      # every source pixel, once
    assert np.all(image[:, ~inside] == 0)          # the mean, after normalisation
    rows, cols = np.nonzero(inside)
    y0, x0 = rows.min(), cols.min()
    np.testing.assert_array_equal(label[y0:y0 + 10, x0:x0 + 7], mask)
    np.testing.assert_array_equal(image[:, y0:y0 + 10, x0:x0 + 7], full)


def test_augment_flips_and_scales_image_and_label_together():
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :4] = 255
    mask = np.zeros((16, 16), np.int64)
    mask[:, :4] = 1
    flips = 0
    for seed in range(8):
        image, label = Augment(crop=None, scale_range=(0.5, 2.0), flip=True)(
            rgb, mask, np.random.default_rng(seed))
        assert image.shape[1:] == label.shape
        assert set(np.unique(label)) <= {0, 1}                  # nearest: no new ids
        # the bright band and class 1 lie on the same side (bilinear blends one column)
        bright = image[0] > 0
        cols = np.arange(label.shape[1])
        assert abs(cols[bright.any(axis=0)].mean() - cols[(label == 1).any(axis=0)].mean()) < 1
        flips += bool(label[0, -1] == 1)
    assert 0 < flips < 8


def test_pad_to_multiple_and_crop_back_round_trip():
    image = np.ones((3, 13, 17), np.float32)
    label = np.zeros((13, 17), np.int64)
    xp, yp = pad_to_multiple(image, label, 8, 255)
    assert xp.shape == (3, 16, 24) and yp.shape == (16, 24)
    assert np.all(yp[13:] == 255) and np.all(yp[:, 17:] == 255) and np.all(xp[:, 13:] == 0)
    np.testing.assert_array_equal(crop_back(yp, (13, 17)), label)


# ------------------------------------------------------------------ loader

def loader_batches(ds, n, workers, state=None, **kwargs):
    loader = SegmentationLoader(ds, 3, Augment(crop=(8, 8), scale_range=(0.75, 1.5)),
                                seed=5, workers=workers, **kwargs)
    if state is not None:
        loader.set_state(state)
    out = [loader.next_batch() for _ in range(n)]
    st = loader.get_state()
    loader.close()
    return out, st


def test_loader_batches_do_not_depend_on_the_worker_count_and_resume_exactly(tmp_path):
    import json
    root, _ = write_nested(tmp_path / "d")
    ds = FolderDataset(root)
    one, _ = loader_batches(ds, 4, workers=1)
    three, _ = loader_batches(ds, 4, workers=3, prefetch=3)
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert one[0]["data"].shape == (3, 3, 8, 8) and one[0]["label"].dtype == np.int64
    first, state = loader_batches(ds, 2, workers=2)
    rest, _ = loader_batches(ds, 2, workers=2, state=json.loads(json.dumps(state)))
    for a, b in zip(one[2:], rest):
        np.testing.assert_array_equal(a["data"], b["data"])


def test_collate_pads_a_batch_to_its_largest_image_rounded_to_the_multiple():
    items = [(np.ones((3, 5, 9), np.float32), np.ones((5, 9), np.int64)),
             (np.ones((3, 11, 4), np.float32), np.zeros((11, 4), np.int64))]
    batch = collate(items, multiple=8)
    assert batch["data"].shape == (2, 3, 16, 16)
    assert np.all(batch["label"][0, 5:] == 255) and np.all(batch["data"][1, :, :, 4:] == 0)


def test_scaled_crop_matches_scaling_the_whole_image_then_cropping():
    from convnet.transforms import resize, scaled_crop
    yy, xx = np.mgrid[0:12, 0:10]
    rgb = np.stack([yy * 20, xx * 25, (yy + xx) * 10], axis=-1).astype(np.uint8)
    mask = (yy // 4 + xx // 5).astype(np.uint8)
    image, label = scaled_crop(rgb, mask, 2.0, (8, 6), np.random.default_rng(7), 255)
    offsets = np.random.default_rng(7)
    y0 = int(offsets.integers(0, 24 - 8 + 1))
    x0 = int(offsets.integers(0, 20 - 6 + 1))
    big_rgb, big_mask = resize(rgb, mask, (24, 20))
    np.testing.assert_array_equal(label, big_mask[y0:y0 + 8, x0:x0 + 6])
    np.testing.assert_allclose(image, normalize_image(big_rgb)[:, y0:y0 + 8, x0:x0 + 6],
                               atol=2 / 255 / 0.25)
