"""scripts/train_segmentation.py and scripts/segment.py on tiny settings: flags, outputs, exit
statuses, resume, eval-only, Ctrl-C. Most runs call main() in-process (fast); the command line
itself and SIGINT run in a subprocess."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402
from conftest import CONVNET_PATH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
TINY = ["--batch-size", "2", "--width", "4", "--train-images", "8", "--val-images", "4",
        "--threads", "1"]
FINAL_LINE = re.compile(r"^val mIoU=\d\.\d{3} pixel_acc=\d\.\d{3}$")


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_script():
    return load_script("train_segmentation")


@pytest.fixture(scope="module")
def segment_script():
    return load_script("segment")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_script):
    """One tiny training run shared by the tests that need its outputs."""
    out = tmp_path_factory.mktemp("run")
    assert train_script.main(["--iters", "2", "--out", str(out), *TINY]) == 0
    return out


def subprocess_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = CONVNET_PATH + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def write_folder(root, n=3, size=(16, 24), drop_mask=None):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        rgb = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"img{i}.png")
        if i != drop_mask:
            lab = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), size=size)
            Image.fromarray(lab).save(root / "labels" / f"img{i}.png")
    return root


def test_command_line_run_prints_progress_and_final_line_and_writes_outputs(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "train_segmentation.py"),
                           "--iters", "3", "--out", str(out), *TINY],
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert FINAL_LINE.match(lines[-1]), lines[-1]
    assert re.search(r"^Iteration 3, loss = \d+\.\d{4}, lr = \S+, \d+\.\d img/s, ETA 0:00:00$",
                     proc.stdout, re.M), proc.stdout
    for name in ("weights.npz", "best.npz", "snapshot.npz", "predictions.png", "log.jsonl",
                 "curves.png", "run.json"):
        assert (out / name).stat().st_size > 0
    with Image.open(out / "predictions.png") as grid:
        assert grid.mode == "RGB"
        # 3 rows (input, truth, prediction) of 64x64 tiles, 2-pixel gaps, zoomed x2, then a
        # legend strip of the class colours and names
        w, h = 2 * (4 * 64 + 3 * 2), 2 * (3 * 64 + 2 * 2)
        assert grid.size[0] == w and h + 10 < grid.size[1] < h + 60
        legend = np.asarray(grid)[h:]
    from convnet.data import palette
    for colour in palette(5)[1:]:
        assert (legend == colour).all(axis=2).sum() > 50     # a swatch for each class


@pytest.mark.filterwarnings("ignore:.*resuming with hyper-parameters that differ")
def test_resume_continues_from_the_snapshot_iteration(trained, train_script, tmp_path, capsys):
    out = tmp_path / "resumed"
    status = train_script.main(["--iters", "3", "--resume", str(trained / "snapshot.npz"),
                                "--out", str(out), *TINY])
    text = capsys.readouterr().out
    assert status == 0
    assert "Resumed from" in text and "at iteration 2" in text
    assert "Iteration 3," in text and "Iteration 1," not in text
    assert FINAL_LINE.match(text.strip().splitlines()[-1])


def test_eval_only_reports_the_trained_weights_score(trained, train_script, tmp_path, capsys):
    out = tmp_path / "eval"
    status = train_script.main(["--eval-only", "--weights", str(trained / "weights.npz"),
                                "--out", str(out), *TINY])
    text = capsys.readouterr().out
    assert status == 0
    assert "Iteration" not in text
    assert FINAL_LINE.match(text.strip().splitlines()[-1])
    assert (out / "predictions.png").exists() and not (out / "weights.npz").exists()


@pytest.mark.parametrize("argv, message", [
    (["--iters", "0"], "--iters must be >= 1"),
    (["--batch-size", "-2"], "--batch-size must be >= 1"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--device", "tpu"], "invalid choice"),
    (["--eval-only"], "--eval-only needs --weights"),
    (["--weights", "w.npz"], "--weights is only used with --eval-only"),
    (["--num-classes", "3"], "--num-classes goes with --data"),
    (["--data", "d", "--size", "30", "32"], "--size must be multiples of 8"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_bad_flags_exit_with_status_2_and_a_message(train_script, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        train_script.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_missing_data_folder_exits_2(train_script, tmp_path, capsys):
    assert train_script.main(["--data", str(tmp_path / "nowhere"), *TINY]) == 2
    assert "nowhere: no such folder" in one_line_error(capsys)


def test_image_without_mask_exits_2_naming_the_file(train_script, tmp_path, capsys):
    root = write_folder(tmp_path / "d", drop_mask=1)
    assert train_script.main(["--data", str(root), *TINY]) == 2
    assert re.search(r"img1.png has no label mask", one_line_error(capsys))


def test_folder_of_odd_sized_images_trains_on_crops(train_script, tmp_path, capsys):
    root = write_folder(tmp_path / "d", size=(15, 20))
    assert train_script.main(["--data", str(root), "--iters", "2", "--crop", "16", "16",
                              "--out", str(tmp_path / "out"), *TINY]) == 0
    assert FINAL_LINE.match(capsys.readouterr().out.strip().splitlines()[-1])


def test_missing_resume_snapshot_exits_2(train_script, tmp_path, capsys):
    assert train_script.main(["--resume", str(tmp_path / "none.npz"), *TINY]) == 2
    assert "none.npz: no such file" in one_line_error(capsys)


def test_garbage_snapshot_exits_2(train_script, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert train_script.main(["--resume", str(bad), "--out", str(tmp_path), *TINY]) == 2
    assert "bad.npz" in one_line_error(capsys)


def test_trains_on_a_user_folder_with_inferred_classes(train_script, tmp_path, capsys):
    root = write_folder(tmp_path / "d", n=4)
    status = train_script.main(["--data", str(root), "--iters", "2", "--size", "16", "16",
                                "--out", str(tmp_path / "out"), *TINY])
    text = capsys.readouterr().out
    assert status == 0
    assert "3 classes" in text and FINAL_LINE.match(text.strip().splitlines()[-1])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_loss_stops_naming_the_iteration_and_keeps_the_snapshot(
        trained, train_script, tmp_path, capsys):
    out = tmp_path / "nan"
    out.mkdir()
    snapshot = out / "snapshot.npz"
    snapshot.write_bytes((trained / "snapshot.npz").read_bytes())
    before = snapshot.read_bytes()
    status = train_script.main(["--iters", "6", "--lr", "1e30", "--out", str(out), *TINY])
    err = capsys.readouterr().err
    assert status == 1
    assert re.search(r"loss is (nan|inf) at iteration \d+", err)
    assert "last good snapshot is kept" in err
    assert snapshot.read_bytes() == before


def test_ctrl_c_writes_a_snapshot_and_exits_130(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-u", os.path.join(SCRIPTS, "train_segmentation.py"),
                             "--iters", "100000", "--out", str(out), *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())
    try:
        deadline = time.time() + 60
        for line in proc.stdout:
            if line.startswith("Iteration 1,") or time.time() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Interrupted at iteration" in rest and "--resume" in rest
    assert (out / "snapshot.npz").stat().st_size > 0


def test_segment_writes_a_mask_of_the_image_size(trained, segment_script, tmp_path, capsys):
    image = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (21, 30, 3), dtype=np.uint8)
                    ).save(image)
    out = tmp_path / "mask.png"
    assert segment_script.main(["--weights", str(trained / "weights.npz"), "--image",
                                str(image), "--out", str(out)]) == 0
    with Image.open(out) as mask:
        # a class-index mask whose palette holds the training script's class colours
        assert mask.size == (30, 21) and mask.mode == "P"
        index = np.asarray(mask)
        colours = {tuple(c) for c in np.asarray(mask.convert("RGB")).reshape(-1, 3)}
    assert index.max() < 5
    from convnet.data import palette
    assert colours <= {tuple(c) for c in palette(5)}
    with Image.open(tmp_path / "mask_overlay.png") as overlay:
        assert overlay.size == (30, 21) and overlay.mode == "RGB"
    assert "21x30 mask, 5 classes" in capsys.readouterr().out


def test_segment_errors_exit_2(trained, segment_script, tmp_path, capsys):
    weights = str(trained / "weights.npz")
    assert segment_script.main(["--weights", weights, "--image", str(tmp_path / "no.png"),
                                "--out", str(tmp_path / "m.png")]) == 2
    assert "no.png: no such file" in one_line_error(capsys)
    image = tmp_path / "im.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert segment_script.main(["--weights", weights, "--image", str(image), "--out",
                                str(tmp_path / "m.png"), "--num-classes", "7"]) == 2
    assert "predict 5 classes" in one_line_error(capsys)
    with pytest.raises(SystemExit) as exc:
        segment_script.main(["--weights", weights, "--image", str(image)])
    assert exc.value.code == 2


# ------------------------------------------------------------------ real-data workflow

def write_voc(root, n=5, size=(20, 28)):
    rng = np.random.default_rng(2)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = size[0] + 3 * i, size[1] - 2 * i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{i}.jpg")
        mask = rng.choice(np.array([0, 1, 255], np.uint8), size=(h, w))
        lab = Image.frombytes("P", (w, h), mask.tobytes())
        lab.putpalette([0, 0, 0, 128, 0, 0] + [224, 224, 192] * 254)
        lab.save(root / "SegmentationClass" / f"{i}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("0\n1\n2\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("3\n4\n")
    return root


def test_voc_layout_trains_with_crops_and_logs_validations(train_script, tmp_path, capsys):
    import json
    root = write_voc(tmp_path / "voc")
    out = tmp_path / "out"
    status = train_script.main(["--data", str(root), "--iters", "2", "--crop", "16", "16",
                                "--val-every", "1", "--class-names", "bg,thing",
                                "--out", str(out), *TINY])
    text = capsys.readouterr().out
    assert status == 0, text
    assert "Checked 5 masks" in text and "2 classes" in text
    assert "Validation at iteration 1:" in text and "Validation at iteration 2:" in text
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    val_recs = [r for r in records if "val" in r]
    assert [r["iter"] for r in val_recs] == [1, 2]
    assert {"iter", "loss", "lr", "img_s"} <= set(train_recs[0])
    assert set(val_recs[0]["val"]) == {"pixel_acc", "miou", "iou"}
    assert set(val_recs[0]["val"]["iou"]) == {"bg", "thing"}
    assert (out / "best.npz").stat().st_size > 0 and (out / "curves.png").stat().st_size > 0
    assert "ETA measuring" in text


def test_mask_problems_exit_2_before_training_one_line_each(train_script, tmp_path, capsys):
    root = write_folder(tmp_path / "d", n=3)
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(root / "labels" / "img0.png")
    bad = np.zeros((16, 24), np.uint8)
    bad[0, 0] = 9
    Image.fromarray(bad).save(root / "labels" / "img2.png")
    status = train_script.main(["--data", str(root), "--num-classes", "3",
                                "--out", str(tmp_path / "o"), *TINY])
    captured = capsys.readouterr()
    assert status == 2 and "Iteration" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("train_segmentation.py: error:")
                                   for line in lines)
    assert "img0.png has mode RGB" in lines[0] and "img2.png holds value 9" in lines[1]


def test_binary_masks_warn_and_map_label_fixes_them(train_script, tmp_path, capsys):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.png")
        Image.fromarray(rng.choice(np.array([0, 255], np.uint8), (16, 16))).save(
            root / "labels" / f"{i}.png")
    args = ["--data", str(root), "--iters", "1", "--crop", "16", "16", "--out",
            str(tmp_path / "o"), *TINY]
    assert train_script.main(args) == 0
    assert "warning: every mask holds only 0 and 255" in capsys.readouterr().out
    assert train_script.main(args + ["--map-label", "255=1"]) == 0
    text = capsys.readouterr().out
    assert "warning" not in text and "2 classes" in text


def test_resume_refuses_a_changed_batch_size_or_seed(trained, train_script, tmp_path, capsys):
    snap = str(trained / "snapshot.npz")
    argv = ["--iters", "3", "--resume", snap, "--out", str(tmp_path / "r"), *TINY]
    i = argv.index("--batch-size")
    changed = argv[:i + 1] + ["4"] + argv[i + 2:]
    assert train_script.main(changed) == 2
    err = one_line_error(capsys)
    assert "--batch-size 2 (now 4)" in err and "Pass the same values" in err
    assert train_script.main(argv + ["--seed", "3"]) == 2
    assert "--seed 0 (now 3)" in one_line_error(capsys)


@pytest.mark.parametrize("model", ["fcn8s", "deeplab", "segnet"])
def test_each_zoo_model_trains_from_the_command_line(model, train_script, tmp_path, capsys):
    out = tmp_path / model
    status = train_script.main(["--model", model, "--iters", "1", "--train-images", "4",
                                "--out", str(out), *TINY])
    text = capsys.readouterr().out
    assert status == 0 and f"Training {model}" in text
    assert FINAL_LINE.match(text.strip().splitlines()[-1])


def test_segment_takes_a_folder_and_explains_a_snapshot(trained, segment_script, tmp_path,
                                                       capsys):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, size in (("a.jpg", (13, 21)), ("sub/b.png", (30, 9))):
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(src / name)
    out = tmp_path / "masks"
    assert segment_script.main(["--weights", str(trained / "weights.npz"), "--image",
                                str(src), "--out", str(out)]) == 0
    with Image.open(out / "sub" / "b.png") as m:
        assert m.mode == "P" and m.size == (9, 30)
    assert (out / "a.png").exists() and (out / "a_overlay.png").exists()
    assert "2 images segmented" in capsys.readouterr().out
    assert segment_script.main(["--weights", str(trained / "snapshot.npz"), "--image",
                                str(src / "a.jpg"), "--out", str(tmp_path / "x.png")]) == 2
    assert "solver snapshot" in one_line_error(capsys)


def test_train_and_val_mask_problems_are_reported_together(train_script, tmp_path, capsys):
    root = write_voc(tmp_path / "voc")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "SegmentationClass" / "1.png")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "SegmentationClass" / "4.png")
    assert train_script.main(["--data", str(root), "--out", str(tmp_path / "o"), *TINY]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert "train" in lines[0] and "1.png is 5x5" in lines[0]
    assert "val" in lines[1] and "4.png has mode RGB" in lines[1]
