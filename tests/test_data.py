"""convnet.data: the synthetic dataset, the folder loader and the batch iterator."""

import json

import numpy as np
import pytest

import convnet
from convnet.data import (BatchIterator, FolderDataset, SyntheticShapes, denormalize_image,
                          normalize_image)
from convnet.errors import ConfigError, DataError, FileFormatError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


@pytest.fixture(scope="module")
def train():
    return SyntheticShapes("train", num_images=96, size=32)


@pytest.fixture(scope="module")
def val():
    return SyntheticShapes("val", num_images=64, size=32)


def test_items_have_documented_shapes_dtypes_and_classes(train):
    image, label = train[3]
    assert image.shape == (3, 32, 32) and image.dtype == np.float32
    assert label.shape == (32, 32) and label.dtype == np.int64
    assert len(train) == 96 and train[-1][1].shape == (32, 32)
    assert SyntheticShapes.num_classes == len(SyntheticShapes.class_names) >= 5
    assert set(np.unique(train.labels)) == set(range(SyntheticShapes.num_classes))


def test_images_are_roughly_zero_mean_unit_scale(train):
    assert abs(float(train.images.mean())) < 0.3
    assert 0.5 < float(train.images.std()) < 1.5


def test_generation_is_deterministic_and_seeded():
    a = SyntheticShapes("val", num_images=10, size=24, seed=3)
    b = SyntheticShapes("val", num_images=10, size=24, seed=3)
    c = SyntheticShapes("val", num_images=10, size=24, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)


def test_rendering_on_two_threads_gives_the_one_thread_images():
    # 200 images are four chunks, rendered concurrently on two threads
    before = convnet.get_num_threads()
    try:
        convnet.set_num_threads(1)
        one = SyntheticShapes("train", num_images=200, size=24, seed=5)
        convnet.set_num_threads(2)
        two = SyntheticShapes("train", num_images=200, size=24, seed=5)
    finally:
        convnet.set_num_threads(before)
    np.testing.assert_array_equal(one.images, two.images)
    np.testing.assert_array_equal(one.labels, two.labels)


def test_smaller_dataset_is_a_prefix_of_a_larger_one():
    small = SyntheticShapes("train", num_images=5, size=24)
    big = SyntheticShapes("train", num_images=70, size=24)
    np.testing.assert_array_equal(small.images, big.images[:5])


def test_val_images_never_equal_train_images(train, val):
    flat_train = {img.tobytes() for img in train.images}
    assert not any(img.tobytes() in flat_train for img in val.images)
    assert len(flat_train) == len(train)


def test_scenes_have_overlaps_varied_sizes_and_textured_backgrounds(train):
    counts = np.array([np.bincount(lab.ravel(), minlength=5) for lab in train.labels])
    fg = counts[:, 1:].sum(axis=1)
    assert fg.min() > 0 and fg.std() > 0.2 * fg.mean()
    background = train.images[:, :, :, :][np.broadcast_to((train.labels == 0)[:, None],
                                                          train.images.shape)]
    assert background.std() > 0.3
    # a ring over another shape (or a shape cut by a later one) leaves several classes per image
    assert np.mean((counts[:, 1:] > 0).sum(axis=1) >= 2) > 0.3


def test_get_batch_matches_items(train):
    data, label = train.get_batch([5, 0, 5])
    np.testing.assert_array_equal(data[0], train[5][0])
    np.testing.assert_array_equal(label[1], train[0][1])
    assert label.dtype == np.int64


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="test"), "split must be 'train' or 'val'"),
    (dict(num_images=0), "num_images must be an int >= 1"),
    (dict(size=8), "size must be an int >= 16"),
    (dict(seed=-1), "seed must be an int >= 0"),
])
def test_bad_synthetic_parameters_are_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SyntheticShapes(**kwargs)


def test_index_out_of_range(val):
    with pytest.raises(IndexError, match="index 64 out of range"):
        val[64]


def test_normalize_and_denormalize_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = normalize_image(rgb)
    assert image.shape == (3, 5, 7)
    np.testing.assert_array_equal(denormalize_image(image), rgb)


# ------------------------------------------------------------------ BatchIterator

def test_each_epoch_visits_every_image_once(val):
    it = BatchIterator(val, batch_size=10, seed=1)
    seen = [i for _ in range(6) for i in it.next_indices()] + it.next_indices()[:4]
    assert sorted(seen) == list(range(64))
    assert it.epoch == 1


def test_batches_are_deterministic_from_the_seed(val):
    a = BatchIterator(val, 8, seed=5, augment=True)
    b = BatchIterator(val, 8, seed=5, augment=True)
    c = BatchIterator(val, 8, seed=6, augment=True)
    for _ in range(3):
        ba, bb, bc = a.next_batch(), b.next_batch(), c.next_batch()
        np.testing.assert_array_equal(ba["data"], bb["data"])
        np.testing.assert_array_equal(ba["label"], bb["label"])
    assert not np.array_equal(ba["data"], bc["data"])


def test_batch_layout(val):
    batch = BatchIterator(val, 4, seed=0).next_batch()
    assert batch["data"].shape == (4, 3, 32, 32) and batch["data"].dtype == np.float32
    assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.int64
    assert batch["data"].flags.c_contiguous and batch["label"].flags.c_contiguous


def test_no_shuffle_keeps_dataset_order(val):
    it = BatchIterator(val, 5, shuffle=False)
    assert it.next_indices() == [0, 1, 2, 3, 4]


def test_augment_flips_image_and_label_together(val):
    it = BatchIterator(val, 64, shuffle=False, seed=2, augment=True)
    batch = it.next_batch()
    flipped = 0
    for i in range(64):
        image, label = val[i]
        if np.array_equal(batch["data"][i], image[..., ::-1]) and not np.array_equal(
                batch["data"][i], image):
            np.testing.assert_array_equal(batch["label"][i], label[..., ::-1])
            flipped += 1
        else:
            np.testing.assert_array_equal(batch["data"][i], image)
            np.testing.assert_array_equal(batch["label"][i], label)
    assert 10 < flipped < 54


def test_state_round_trip_through_json_resumes_the_same_batches(val):
    it = BatchIterator(val, 9, seed=3, augment=True)
    for _ in range(5):
        it.next_batch()
    state = json.loads(json.dumps(it.get_state()))
    expected = [it.next_batch() for _ in range(10)]
    resumed = BatchIterator(val, 9, seed=99, augment=True)
    resumed.set_state(state)
    for want in expected:
        got = resumed.next_batch()
        np.testing.assert_array_equal(got["data"], want["data"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_state_of_another_dataset_is_rejected(val, train):
    state = BatchIterator(val, 4).get_state()
    with pytest.raises(ConfigError, match="not a permutation of the dataset's 96 indices"):
        BatchIterator(train, 4).set_state(state)
    with pytest.raises(ConfigError, match="keys epoch, position, order, rng"):
        BatchIterator(val, 4).set_state({"epoch": 0})


def test_bad_batch_size_is_an_error(val):
    with pytest.raises(ConfigError, match="batch_size must be an int >= 1, got 0"):
        BatchIterator(val, 0)


# ------------------------------------------------------------------ FolderDataset

def write_folder(root, sizes=((12, 10), (12, 10)), label_mode="L", values=(0, 1, 2, 255)):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"im{i}.png")
        lab = rng.choice(np.array(values, dtype=np.uint8), size=(h, w))
        img = Image.fromarray(lab)
        if label_mode == "P":
            img.putpalette([v for c in range(256) for v in (c, 255 - c, c)])
        elif label_mode == "RGB":
            img = img.convert("RGB")
        img.save(root / "labels" / f"im{i}.png")
    return root


@pytest.mark.parametrize("mode", ["L", "P"])
def test_folder_dataset_reads_images_and_masks(tmp_path, mode):
    root = write_folder(tmp_path / "d", label_mode=mode)
    ds = FolderDataset(root)
    assert Image.open(root / "labels" / "im0.png").mode == mode
    assert len(ds) == 2 and ds.num_classes == 3
    image, label = ds[1]
    assert image.shape == (3, 12, 10) and image.dtype == np.float32
    assert label.dtype == np.int64 and set(np.unique(label)) <= {0, 1, 2, 255}
    rgb = np.asarray(Image.open(root / "images" / "im1.png"))
    np.testing.assert_array_equal(denormalize_image(image), rgb)
    np.testing.assert_array_equal(label, np.asarray(Image.open(root / "labels" / "im1.png")))


def test_folder_dataset_resizes_to_a_fixed_size_and_batches(tmp_path):
    root = write_folder(tmp_path / "d", sizes=((12, 10), (20, 16)))
    ds = FolderDataset(root, size=(8, 6))
    batch = BatchIterator(ds, 2, seed=0).next_batch()
    assert batch["data"].shape == (2, 3, 8, 6) and batch["label"].shape == (2, 8, 6)
    assert set(np.unique(batch["label"])) <= {0, 1, 2, 255}


def test_images_of_different_sizes_cannot_share_a_batch(tmp_path):
    root = write_folder(tmp_path / "d", sizes=((12, 10), (20, 16)))
    with pytest.raises(DataError, match="cannot share a batch"):
        BatchIterator(FolderDataset(root), 2, shuffle=False).next_batch()


def test_missing_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileFormatError, match="folder .*nowhere does not exist"):
        FolderDataset(tmp_path / "nowhere")
    (tmp_path / "d" / "images").mkdir(parents=True)
    with pytest.raises(FileFormatError, match="labels does not exist"):
        FolderDataset(tmp_path / "d")


def test_empty_images_folder_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(FileFormatError, match="no .png or .jpg images"):
        FolderDataset(tmp_path)


def test_image_without_mask_is_an_error_naming_the_file(tmp_path):
    root = write_folder(tmp_path / "d")
    (root / "labels" / "im1.png").unlink()
    with pytest.raises(DataError, match=r"im1.png has no label mask \(expected .*labels/im1.png"):
        FolderDataset(root)


def test_size_mismatch_is_an_error_naming_both_files(tmp_path):
    root = write_folder(tmp_path / "d")
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(root / "labels" / "im0.png")
    with pytest.raises(DataError, match=r"image .*im0.png is 12x10 but its mask .*im0.png is 5x5"):
        FolderDataset(root)


def test_rgb_mask_is_an_error(tmp_path):
    root = write_folder(tmp_path / "d", label_mode="RGB")
    with pytest.raises(DataError, match="has mode RGB; expected a single-channel"):
        FolderDataset(root)


def test_garbage_image_file_is_an_error_naming_it(tmp_path):
    root = write_folder(tmp_path / "d")
    (root / "images" / "im0.png").write_bytes(b"not a png")
    with pytest.raises(FileFormatError, match="cannot read .*im0.png"):
        FolderDataset(root)


def test_label_beyond_given_num_classes_is_an_error_before_any_item_is_read(tmp_path):
    root = write_folder(tmp_path / "d")
    with pytest.raises(DataError, match=r"im0.png holds value 2 \(\d+ pixels\), outside "
                                        r"\[0, 2\)(.|\n)*im1.png holds value 2"):
        FolderDataset(root, num_classes=2)
