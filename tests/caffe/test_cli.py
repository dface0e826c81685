"""The ``convnet`` command: train (and resume), test, time and convert, and its errors."""

import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("google.protobuf")

from convnet import caffe, cli  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
from conftest import CONVNET_PATH  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(capsys, *argv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", caffe.CaffeLoadNote)
        code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name in ("deeplab_v2.prototxt", "solver_deeplab.prototxt", "deconvnet_v1.prototxt"):
        shutil.copy(os.path.join(FIXTURES, name), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_resume_test_and_convert(workdir, capsys):
    code, out, _ = run(capsys, "train", "--solver", "solver_deeplab.prototxt",
                       "--data", "synthetic")
    assert code == 0, out
    assert "Iteration 2, loss = " in out and "Iteration 4, loss = " in out
    assert "Optimization Done." in out
    assert "Iteration 2, Testing net (1 iterations)" in out       # test_interval 2
    assert "    Test net output: mean_iou = " in out
    for stem in ("deeplab_iter_2", "deeplab_iter_4"):
        assert (workdir / f"{stem}.caffemodel").exists()
        assert (workdir / f"{stem}.solverstate.npz").exists()
    shutil.copy("deeplab_iter_4.caffemodel", "straight.caffemodel")
    code, out, _ = run(capsys, "train", "--solver", "solver_deeplab.prototxt", "--data",
                       "synthetic", "--snapshot", "deeplab_iter_2.solverstate.npz",
                       "--weights", "deeplab_iter_2.caffemodel")
    assert code == 0
    assert "Resumed from deeplab_iter_2.solverstate.npz at iteration 2" in out
    assert "Iteration 2," not in out and "Iteration 4, loss" in out
    # the resumed run ends exactly where the uninterrupted one did
    for x, y in zip(caffe.read_caffemodel("straight.caffemodel"),
                    caffe.read_caffemodel("deeplab_iter_4.caffemodel")):
        for u, v in zip(x.blobs, y.blobs):
            np.testing.assert_array_equal(u, v)
    code, out, _ = run(capsys, "test", "--model", "deeplab_v2.prototxt", "--weights",
                       "deeplab_iter_4.caffemodel", "--iterations", "2")
    assert code == 0, out
    assert "Loaded weights: LoadReport" in out
    assert "pixel_accuracy = " in out and "mean_iou = " in out
    # caffemodel -> npz -> caffemodel -> onnx
    args = ["--model", "deeplab_v2.prototxt"]
    assert run(capsys, "convert", "deeplab_iter_4.caffemodel", "w.npz", *args)[0] == 0
    assert run(capsys, "convert", "w.npz", "back.caffemodel", *args)[0] == 0
    a = caffe.read_caffemodel("deeplab_iter_4.caffemodel")
    b = caffe.read_caffemodel("back.caffemodel")
    assert [x.name for x in a] == [x.name for x in b]
    for x, y in zip(a, b):
        for u, v in zip(x.blobs, y.blobs):
            np.testing.assert_array_equal(u, v)
    pytest.importorskip("onnx")
    code, out, _ = run(capsys, "convert", "back.caffemodel", "net.onnx", *args)
    assert code == 0 and (workdir / "net.onnx").exists()


def test_test_reads_a_folder_dataset(workdir, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for folder in ("images", "labels"):
            (workdir / "data" / split / folder).mkdir(parents=True)
        for i in range(2):
            image = rng.integers(0, 256, (41, 41, 3), dtype=np.uint8)
            label = rng.integers(0, 5, (41, 41), dtype=np.uint8)
            Image.fromarray(image).save(workdir / "data" / split / "images" / f"{i}.png")
            Image.fromarray(label, mode="L").save(workdir / "data" / split / "labels" / f"{i}.png")
    code, out, err = run(capsys, "test", "--model", "deeplab_v2.prototxt", "--data", "data",
                         "--iterations", "2")
    assert code == 0, err
    assert "mean_iou = " in out
    code, out, err = run(capsys, "train", "--solver", "solver_deeplab.prototxt", "--data",
                         "data", "--iterations", "2")
    assert code == 0, err
    assert "Test net output: pixel_accuracy" in out


def test_convert_a_caffemodel_that_holds_its_net(workdir, capsys):
    # Caffe writes the whole NetParameter (layers with bottoms, tops and params) plus blobs
    from convnet.caffe import schema
    from convnet.caffe.weights import caffemodel_layers
    net = caffe.load_net(os.path.join(FIXTURES, "fcn8s_v2.prototxt"))
    message = caffe.read_net(os.path.join(FIXTURES, "fcn8s_v2.prototxt")).message
    blobs = {name: arrays for name, _, arrays in caffemodel_layers(net)}
    full = schema.message_class("bvlc", "NetParameter")()
    full.CopyFrom(message)
    for lp in full.layer:
        for array in blobs.get(lp.name, []):
            b = lp.blobs.add()
            b.shape.dim.extend(array.shape)
            b.data.extend(array.reshape(-1).tolist())
    (workdir / "full.caffemodel").write_bytes(full.SerializeToString())
    code, out, err = run(capsys, "convert", "full.caffemodel", "w.npz", "--shape",
                         "data=1,3,32,32", "--shape", "label=1,1,32,32")
    assert code == 0, err
    again = caffe.load_net(os.path.join(FIXTURES, "fcn8s_v2.prototxt"))
    again.load("w.npz")
    for (key, p), (_, q) in zip(net.named_params(), again.named_params()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=key)
    caffe.save_caffemodel(net, "weights_only.caffemodel")
    code, _, err = run(capsys, "convert", "weights_only.caffemodel", "x.npz")
    assert code == 2 and "--model" in err


def test_time_prints_per_layer_and_totals(capsys):
    code, out, _ = run(capsys, "time", "--model", os.path.join(FIXTURES, "fcn8s_v2.prototxt"),
                       "--iterations", "1", "--phase", "TEST")
    assert code == 0
    assert "conv1_1\tforward: " in out and "upscore8\tbackward: " in out
    assert "Average Forward pass: " in out and "Average Forward-Backward: " in out
    backward = float(out.split("Average Backward pass: ")[1].split(" ms")[0])
    assert backward > 0


def test_convert_upgrades_a_v1_prototxt(workdir, capsys):
    code, out, _ = run(capsys, "convert", "deconvnet_v1.prototxt", "v2.prototxt")
    assert code == 0 and "upgraded from V1" in out
    text = (workdir / "v2.prototxt").read_text()
    assert "layer {" in text and "layers {" not in text and 'type: "BN"' in text
    assert len(caffe.load_net("v2.prototxt").layers) == len(
        caffe.load_net("deconvnet_v1.prototxt").layers)


@pytest.mark.parametrize("argv,words", [
    (["train", "--solver", os.path.join(FIXTURES, "solver_deeplab.prototxt")],
     ["--data", "ImageSegData layer 'data'"]),
    (["convert", "a.caffemodel", "b.npz"], ["--model"]),
    (["convert", "a.txt", "b.npz"], [".caffemodel, .npz or .prototxt"]),
    (["test", "--model", "/nonexistent.prototxt"], ["no such net definition file"]),
    (["time", "--model", os.path.join(FIXTURES, "segnet.prototxt")], ["data", "--shape"]),
    (["time", "--model", os.path.join(FIXTURES, "fcn8s_v2.prototxt"), "--iterations", "0"],
     ["--iterations must be >= 1"]),
])
def test_errors_exit_2_with_a_message(capsys, argv, words):
    code, _, err = run(capsys, *argv)
    assert code == 2
    for word in words:
        assert word in err


def test_module_entry_point(tmp_path):
    # outside the checkout, with the convnet under test on the path (not the source tree)
    out = subprocess.run([sys.executable, "-m", "convnet.cli", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=str(tmp_path),
                         env={**os.environ, "PYTHONPATH": CONVNET_PATH})
    assert out.returncode == 0
    for command in ("train", "test", "time", "convert"):
        assert command in out.stdout


@pytest.mark.skipif(shutil.which("convnet") is None, reason="convnet is not installed "
                                                            "(pip install .)")
def test_console_script():
    out = subprocess.run(["convnet", "convert", "a.txt", "b.npz"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and ".caffemodel, .npz or .prototxt" in out.stderr
