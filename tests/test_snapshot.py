"""Solver snapshots: exact resume (bitwise, with Dropout, BatchNorm and a shuffling,
augmenting data iterator), atomic writes, and clear errors for damaged or mismatched files."""

import os

import numpy as np
import pytest

import convnet.snapshot
from convnet import AdamSolver, FileFormatError, Net, SGDSolver, ShapeError
from convnet.data import BatchIterator
from convnet.layers import BatchNorm, Convolution, Dropout, ReLU, SoftmaxWithLoss


class TinyDataset:
    """Seven deterministic 3x6x7 images with 3-class label maps."""

    def __init__(self):
        rng = np.random.default_rng(42)
        self.images = rng.standard_normal((7, 3, 6, 7)).astype(np.float32)
        self.labels = rng.integers(0, 3, (7, 6, 7))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def make_net(seed, head="conv2"):
    """conv -> BatchNorm -> ReLU -> Dropout -> conv -> SoftmaxWithLoss (float32). ``seed``
    sets the initial weights and the dropout stream."""
    net = Net("resume")
    c1 = Convolution(num_output=4, kernel_size=3, pad=1, name="conv1")
    c2 = Convolution(num_output=3, kernel_size=1, name=head)
    c1.rng, c2.rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    net.add(c1, bottom=["data"], top=["conv1"])
    net.add(BatchNorm(name="bn1"), bottom=["conv1"], top=["bn1"])
    net.add(ReLU(name="relu1"), bottom=["bn1"], top=["bn1"])
    net.add(Dropout(dropout_ratio=0.3, seed=seed + 2, name="drop1"), bottom=["bn1"],
            top=["bn1"])
    net.add(c2, bottom=["bn1"], top=["score"])
    net.add(SoftmaxWithLoss(name="loss"), bottom=["score", "label"], top=["loss"])
    return net


def make_solver(kind, seed, **kw):
    data = BatchIterator(TinyDataset(), batch_size=3, shuffle=True, seed=seed, augment=True)
    if kind == "sgd":
        return SGDSolver(make_net(seed), base_lr=0.1, momentum=0.9, weight_decay=1e-3,
                         lr_policy="step", gamma=0.5, stepsize=3, data=data, **kw)
    return AdamSolver(make_net(seed), base_lr=0.01, weight_decay=1e-3, lr_policy="exp",
                      gamma=0.9, data=data, **kw)


def state_of(net):
    return {**{k: p.data.copy() for k, p in net.named_params()},
            **{k: np.array(b, copy=True) for k, b in net.named_buffers()}}


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("iter_size", [1, 2])
def test_resumed_run_reproduces_the_uninterrupted_run_bitwise(tmp_path, kind, iter_size):
    total, cut = 6, 2
    straight = make_solver(kind, 0, iter_size=iter_size)
    expected = [straight.step() for _ in range(total)]

    first = make_solver(kind, 0, iter_size=iter_size)
    losses = [first.step() for _ in range(cut)]
    path = tmp_path / "snap.npz"
    first.snapshot(path)
    # a fresh process: other initial weights, dropout seed and data seed, never set up
    resumed = make_solver(kind, 7, iter_size=iter_size).restore(path)
    assert resumed.iter == cut
    losses += [resumed.step() for _ in range(total - cut)]

    assert losses == expected
    final, ref = state_of(resumed.net), state_of(straight.net)
    assert final.keys() == ref.keys() and "bn1/buffer:mean" in final
    for key in ref:
        np.testing.assert_array_equal(final[key], ref[key], err_msg=key)


def test_snapshot_is_one_plain_npz_with_weights_history_and_metadata(tmp_path):
    solver = make_solver("adam", 0)
    solver.step()
    solver.snapshot(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        keys = set(f.files)
    assert {"net/conv1/weight", "net/bn1/buffer:var", "history/0/conv1/weight",
            "history/1/conv2/bias", "__format__"} <= keys


def test_snapshot_before_the_first_step_restores_and_continues(tmp_path):
    a = make_solver("sgd", 0)
    a.net.setup(data=(3, 3, 6, 7), label=(3, 6, 7))
    a.snapshot(tmp_path / "s.npz")
    b = make_solver("sgd", 5).restore(tmp_path / "s.npz")
    assert b.iter == 0 and a.step() == b.step()


def test_resuming_with_other_hyper_parameters_warns_and_keeps_the_new_ones(tmp_path):
    a = make_solver("sgd", 0)
    a.step()
    a.snapshot(tmp_path / "s.npz")
    b = make_solver("sgd", 0)
    b.base_lr = 0.01
    with pytest.warns(UserWarning, match="base_lr=0.01 \\(snapshot: 0.1\\)"):
        b.restore(tmp_path / "s.npz")
    assert b.base_lr == 0.01


# ---------------------------------------------------------------- atomic writes

def snapshot_pair(tmp_path):
    solver = make_solver("sgd", 0)
    solver.step()
    path = tmp_path / "snap.npz"
    solver.snapshot(path)
    solver.step()
    return solver, path


def failing(exc_after_write):
    """A stand-in for np.savez that writes part of a file, then fails."""
    def savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise exc_after_write
    return savez


@pytest.mark.parametrize("where", ["savez", "fsync", "replace"])
def test_failed_snapshot_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, where):
    solver, path = snapshot_pair(tmp_path)
    if where == "savez":
        monkeypatch.setattr(convnet.snapshot.np, "savez", failing(OSError("disk full")))
    elif where == "fsync":
        def fsync(fd):
            raise OSError("I/O error")
        monkeypatch.setattr(convnet.snapshot.os, "fsync", fsync)
    else:
        def replace(src, dst):
            raise KeyboardInterrupt
        monkeypatch.setattr(convnet.snapshot.os, "replace", replace)
    with pytest.raises((OSError, KeyboardInterrupt)):
        solver.snapshot(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["snap.npz"]
    assert make_solver("sgd", 3).restore(path).iter == 1      # the old, complete snapshot


def test_successful_snapshot_replaces_the_old_one(tmp_path):
    solver, path = snapshot_pair(tmp_path)
    solver.snapshot(path)
    assert os.listdir(tmp_path) == ["snap.npz"]
    assert make_solver("sgd", 3).restore(path).iter == 2


# ---------------------------------------------------------------- bad files

@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "missing", "weights"])
def test_damaged_snapshot_raises_file_format_error_naming_the_file(tmp_path, damage):
    solver, path = snapshot_pair(tmp_path)
    bad = tmp_path / "bad.npz"
    raw = path.read_bytes()
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        bad.write_bytes(raw[: len(raw) - 200])
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).bytes(500))
    elif damage == "weights":
        solver.net.save(bad)
    message = {"empty": "snapshot is empty", "truncated": "truncated or corrupted",
               "garbage": "truncated or corrupted", "missing": "snapshot not found",
               "weights": "is a 'convnet-weights' file, expected a 'convnet-snapshot'"}[damage]
    target = make_solver("sgd", 3)
    target.step()
    before = state_of(target.net)
    with pytest.raises(FileFormatError, match=f"{bad}: .*{message}".replace(".npz", "\\.npz")):
        target.restore(bad)
    assert target.iter == 1
    for key, value in state_of(target.net).items():
        np.testing.assert_array_equal(value, before[key])


def test_restore_checks_the_solver_type(tmp_path):
    adam = make_solver("adam", 0)
    adam.step()
    adam.snapshot(tmp_path / "adam.npz")
    with pytest.raises(FileFormatError, match="snapshot was written by a AdamSolver, cannot "
                                              "restore it into a SGDSolver"):
        make_solver("sgd", 0).restore(tmp_path / "adam.npz")


def test_restore_into_a_different_net_names_the_mismatched_param(tmp_path):
    solver, path = snapshot_pair(tmp_path)
    net = Net("resume")
    net.add(Convolution(num_output=5, kernel_size=3, pad=1, name="conv1"), bottom=["data"],
            top=["conv1"])
    net.add(BatchNorm(name="bn1"), bottom=["conv1"], top=["bn1"])
    net.add(Dropout(seed=0, name="drop1"), bottom=["bn1"], top=["bn1"])
    net.add(Convolution(num_output=3, kernel_size=1, name="conv2"), bottom=["bn1"],
            top=["score"])
    net.add(SoftmaxWithLoss(name="loss"), bottom=["score", "label"], top=["loss"])
    with pytest.raises(FileFormatError, match="solver history 'history/0/conv1/weight' has shape "
                                         "4x3x3x3, the param has 5x3x3x3"):
        SGDSolver(net).restore(path)
    renamed = make_net(0, head="head")
    with pytest.raises(FileFormatError, match="snapshot has no solver history "
                                              "'history/0/head/weight'"):
        SGDSolver(renamed).restore(path)


def test_data_state_that_is_not_json_is_refused_and_the_old_snapshot_kept(tmp_path):
    from convnet import ConfigError
    solver, path = snapshot_pair(tmp_path)
    solver.data.get_state = lambda: {"handle": object()}
    with pytest.raises(ConfigError, match="SGDSolver: cannot snapshot: the data iterator's "
                                          "get_state\\(\\) or a layer's random state is not "
                                          "JSON-serialisable"):
        solver.snapshot(path)
    assert os.listdir(tmp_path) == ["snap.npz"]
    assert make_solver("sgd", 3).restore(path).iter == 1
