"""Snapshots and weight files survive SIGKILL at any moment, and damaged files are refused.

A child process rewrites ``snap.npz`` (solver.snapshot) and ``w.npz`` (net.save) in a loop,
one numbered version after the other (every weight, every history value and the iteration
equal the version number, so a file mixing two versions shows), and is killed with SIGKILL at
random moments, many times. After every kill both files must load completely and hold either
the last version the child finished writing or the one it was writing.

Also: a training process SIGKILLed three times resumes each time from its last snapshot and
ends bit-identical to an uninterrupted run; the training script stopped by Ctrl-C exits 130
with a snapshot, and resumed from it ends with the uninterrupted run's weights; a full disk
fails the write but keeps the previous files whole; truncated, garbage, flipped, mismatched
files raise FileFormatError naming the file and change nothing.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import convnet
from convnet import FileFormatError, Net, SGDSolver
from convnet.layers import BatchNorm, Convolution, SoftmaxWithLoss
from conftest import CONVNET_PATH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLS = 24


def make_net():
    """About 40k params (a 160 kB weights file, 320 kB snapshot): writes take milliseconds,
    so random kills land inside them."""
    net = Net("killme")
    net.add(Convolution(num_output=64, kernel_size=3, pad=1, name="conv1"), bottom=["data"],
            top=["c1"])
    net.add(BatchNorm(name="bn1"), bottom=["c1"], top=["b1"])
    net.add(Convolution(num_output=64, kernel_size=3, pad=1, name="conv2"), bottom=["b1"],
            top=["c2"])
    net.add(Convolution(num_output=3, kernel_size=1, name="score"), bottom=["c2"],
            top=["score"])
    net.add(SoftmaxWithLoss(name="loss"), bottom=["score", "label"], top=["loss"])
    net.setup(data=(1, 3, 4, 4), label=(1, 4, 4))
    return net


def set_version(solver, v):
    """Every weight, BatchNorm buffer and history value = v; iteration = v."""
    net = solver.net
    for p in net.learnable_params:
        p.data[...] = v
    for layer in net.layers:
        for buf in layer.buffers.values():
            buf[...] = v
    solver.set_history([[np.full(p.shape, v, p.dtype)] for p in net.learnable_params])
    solver.iter = v


def version_of_weights(net, what):
    """The single value every param and buffer holds (fails on a mix of versions)."""
    values = set()
    for p in net.learnable_params:
        values.update(np.unique(p.data).tolist())
    for layer in net.layers:
        for buf in layer.buffers.values():
            values.update(np.unique(buf).tolist())
    assert len(values) == 1, f"{what} mixes versions: {sorted(values)[:5]}"
    return int(values.pop())


def writer(directory, first, report_fd):
    """The child's loop: versions first, first + 1, ... to both files; reports each
    'start v' / 'done v' on the pipe."""
    solver = SGDSolver(make_net())
    snap, weights = os.path.join(directory, "snap.npz"), os.path.join(directory, "w.npz")
    v = first
    while True:
        set_version(solver, v)
        os.write(report_fd, f"start {v}\n".encode())
        solver.snapshot(snap)
        os.write(report_fd, f"snap {v}\n".encode())
        solver.net.save(weights)
        os.write(report_fd, f"done {v}\n".encode())
        v += 1


def fork_writer(directory, first):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:       # the child: never returns into pytest
        try:
            os.close(read_fd)
            writer(directory, first, write_fd)
        finally:
            os._exit(3)
    os.close(write_fd)
    return pid, read_fd


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode().split()


def check_files(directory, events, before):
    """Restore both files into fresh objects; return (snapshot version, weights version)
    after checking each against what the child reported: the last version it finished
    writing (``before`` when none) or the one in progress (os.replace may have just run)."""
    pairs = list(zip(events[::2], map(int, events[1::2])))
    snaps_done = [v for e, v in pairs if e == "snap"]
    saves_done = [v for e, v in pairs if e == "done"]
    started = [v for e, v in pairs if e == "start"]

    solver = SGDSolver(make_net())
    solver.restore(os.path.join(directory, "snap.npz"))
    v_snap = version_of_weights(solver.net, "snapshot")
    assert solver.iter == v_snap
    for slots in solver.history_arrays():
        assert np.all(slots[0] == v_snap)
    assert v_snap in ((snaps_done or [before[0]])[-1], started[-1]), (v_snap, events[-6:])

    net = make_net()
    report = net.load(os.path.join(directory, "w.npz"))
    assert not report.missing and not report.skipped
    v_w = version_of_weights(net, "weights file")
    assert v_w in ((saves_done or [before[1]])[-1], started[-1]), (v_w, events[-6:])
    return v_snap, v_w


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_while_writing_always_leaves_complete_previous_files(tmp_path):
    directory = str(tmp_path)
    solver = SGDSolver(make_net())
    set_version(solver, 0)
    solver.snapshot(os.path.join(directory, "snap.npz"))
    solver.net.save(os.path.join(directory, "w.npz"))

    # kill within ~3 rounds of writing (measured here, only to spread the kills), so that
    # most kills come after at least one complete version and most land inside a write
    start = time.perf_counter()
    probe = SGDSolver(make_net())
    set_version(probe, 0)
    probe.snapshot(os.path.join(directory, "probe.npz"))
    probe.net.save(os.path.join(directory, "probe_w.npz"))
    one_round = time.perf_counter() - start
    os.remove(os.path.join(directory, "probe.npz"))
    os.remove(os.path.join(directory, "probe_w.npz"))

    rng = np.random.default_rng(7)
    versions, mid_write, seen = (0, 0), 0, set()
    for _ in range(KILLS):
        pid, fd = fork_writer(directory, max(versions) + 1)
        time.sleep(float(rng.uniform(0.0, 3.0 * one_round)))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        events = read_all(fd)
        if not events:
            continue        # killed before its first write: the files are untouched
        mid_write += events[-2] != "done"
        versions = check_files(directory, events, versions)
        seen.update(versions)
    # the kills did land inside writes, and the files moved on between kills
    assert mid_write >= KILLS // 2, mid_write
    assert len(seen) >= KILLS // 4, seen
    # only the two targets and the temp files of interrupted writes are in the folder
    for name in os.listdir(directory):
        assert name in ("snap.npz", "w.npz") or (name.startswith((".snap.npz.", ".w.npz."))
                                                 and name.endswith(".tmp")), name


CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
import convnet
from test_snapshot_kill import child_batch, make_child_solver
solver = make_child_solver()
try:
    solver.restore(sys.argv[1])
except convnet.FileFormatError:
    pass                  # the first run: no snapshot yet
while True:
    solver.step(**child_batch())
    solver.snapshot(sys.argv[1])
    print(solver.iter, flush=True)
"""


def make_child_solver():
    """conv -> ReLU (in place) -> 1x1 conv -> SoftmaxWithLoss, seeded; SGD."""
    from convnet.layers import ReLU
    convnet.seed(3)
    net = Net("child")
    net.add(Convolution(num_output=8, kernel_size=3, pad=1, name="conv1"), bottom=["data"],
            top=["c1"])
    net.add(ReLU(name="relu1"), bottom=["c1"], top=["c1"])
    net.add(Convolution(num_output=3, kernel_size=1, name="score"), bottom=["c1"],
            top=["score"])
    net.add(SoftmaxWithLoss(name="loss"), bottom=["score", "label"], top=["loss"])
    return SGDSolver(net, base_lr=0.01)


def child_batch():
    rng = np.random.default_rng(0)
    return {"data": rng.standard_normal((2, 3, 8, 8)).astype(np.float32),
            "label": rng.integers(0, 3, (2, 8, 8))}


def test_sigkilled_training_resumes_from_its_last_snapshot_as_if_never_stopped(tmp_path):
    path = str(tmp_path / "snap.npz")
    env = dict(os.environ, PYTHONPATH=CONVNET_PATH, OMP_NUM_THREADS="1")
    rng = np.random.default_rng(11)
    iters = []
    for _ in range(3):
        # cwd: `python -c` puts the working folder first on sys.path; the checkout's source
        # tree must not shadow the convnet under test
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, os.path.dirname(__file__)],
                                 env=env, stdout=subprocess.PIPE, text=True, cwd=str(tmp_path))
        assert child.stdout.readline().strip()       # it trained and wrote at least once
        time.sleep(float(rng.uniform(0.0, 0.05)))
        child.send_signal(signal.SIGKILL)
        child.communicate()
        assert child.returncode == -signal.SIGKILL
        solver = make_child_solver()
        solver.restore(path)
        iters.append(solver.iter)
    # each run resumed from the previous one's last snapshot and wrote at least one more
    assert iters[0] >= 1 and all(b > a for a, b in zip(iters, iters[1:])), iters
    # three times killed and resumed = the same number of steps in one go, bit for bit
    straight = make_child_solver()
    for _ in range(solver.iter):
        straight.step(**child_batch())
    for p, q in zip(solver.net.learnable_params, straight.net.learnable_params):
        np.testing.assert_array_equal(p.data, q.data)
    for a, b in zip(solver.history_arrays(), straight.history_arrays()):
        np.testing.assert_array_equal(a[0], b[0])


DISK_FULL_CHILD = """
import json, os, resource, signal, sys
sys.path.insert(0, sys.argv[2])
from convnet import SGDSolver
from test_snapshot_kill import make_net, set_version
directory = sys.argv[1]
solver = SGDSolver(make_net())
set_version(solver, 1)
snap, weights = os.path.join(directory, "snap.npz"), os.path.join(directory, "w.npz")
solver.snapshot(snap)
solver.net.save(weights)
# the disk "fills up": writes past 100 kB fail with EFBIG (SIGXFSZ ignored) like ENOSPC
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
set_version(solver, 2)
errors = []
for write, path in ((solver.snapshot, snap), (solver.net.save, weights)):
    try:
        write(path)
        errors.append(None)
    except OSError as exc:
        errors.append([type(exc).__name__, str(exc)])
print(json.dumps(errors))
"""


def run_disk_full_child(directory):
    env = dict(os.environ, PYTHONPATH=CONVNET_PATH, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, directory,
                             os.path.dirname(__file__)], env=env, capture_output=True,
                            text=True, timeout=120, cwd=directory)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_full_disk_raises_and_keeps_the_previous_files_whole(tmp_path):
    directory = str(tmp_path)
    errors = run_disk_full_child(directory)
    assert all(e is not None for e in errors), errors
    # the old version is intact and nothing is left behind
    assert sorted(os.listdir(directory)) == ["snap.npz", "w.npz"]
    solver = SGDSolver(make_net())
    solver.restore(os.path.join(directory, "snap.npz"))
    assert solver.iter == 1 and version_of_weights(solver.net, "snapshot") == 1
    net = make_net()
    net.load(os.path.join(directory, "w.npz"))
    assert version_of_weights(net, "weights") == 1


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_full_disk_error_names_the_file_it_could_not_write(tmp_path):
    snap_error, weights_error = run_disk_full_child(str(tmp_path))
    assert "snap.npz" in snap_error[1] and "w.npz" in weights_error[1]
    for error in (snap_error, weights_error):
        assert error[0] == "FileFormatError" and "previous file is unchanged" in error[1]


# --------------------------------------------------------------------------- damaged files
@pytest.fixture
def files(tmp_path):
    solver = SGDSolver(make_net())
    set_version(solver, 5)
    snap, weights = str(tmp_path / "snap.npz"), str(tmp_path / "w.npz")
    solver.snapshot(snap)
    solver.net.save(weights)
    return {"snapshot": snap, "weights": weights}


def load(kind, path):
    if kind == "snapshot":
        SGDSolver(make_net()).restore(path)
    else:
        make_net().load(path)


@pytest.mark.parametrize("kind", ["snapshot", "weights"])
def test_files_carry_format_name_and_version(files, kind):
    with np.load(files[kind], allow_pickle=False) as f:
        meta = json.loads(str(f["__format__"][()]))
    assert meta["format"] == f"convnet-{kind}"
    assert isinstance(meta["version"], int) and meta["version"] >= 1


@pytest.mark.parametrize("kind", ["snapshot", "weights"])
def test_every_truncation_raises_file_format_error_naming_the_file(files, kind, tmp_path):
    with open(files[kind], "rb") as f:
        data = f.read()
    cuts = sorted({0, 1, 10, 21, 100, len(data) - 1, len(data) - 22, len(data) - 100,
                   *np.random.default_rng(1).integers(1, len(data), 12).tolist()})
    for cut in cuts:
        path = str(tmp_path / f"cut_{cut}.npz")
        with open(path, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(FileFormatError, match=rf"cut_{cut}\.npz: "):
            load(kind, path)


@pytest.mark.parametrize("kind", ["snapshot", "weights"])
def test_garbage_and_flipped_bytes_raise_file_format_error_naming_the_file(files, kind,
                                                                           tmp_path):
    rng = np.random.default_rng(2)
    garbage = str(tmp_path / "garbage.npz")
    with open(garbage, "wb") as f:
        f.write(rng.bytes(4096))
    with pytest.raises(FileFormatError, match=r"garbage\.npz: .*(truncated|corrupted)"):
        load(kind, garbage)
    with open(files[kind], "rb") as f:
        data = bytearray(f.read())
    with zipfile.ZipFile(files[kind]) as z:
        info = z.getinfo("net/conv2/weight.npy" if kind == "snapshot" else "conv2/weight.npy")
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 1000
    data[offset] ^= 0x55
    flipped = str(tmp_path / "flipped.npz")
    with open(flipped, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(FileFormatError, match=r"flipped\.npz: "):
        load(kind, flipped)


def test_mismatched_files_raise_file_format_error_naming_the_file(files):
    with pytest.raises(FileFormatError, match=r"snap\.npz: is a 'convnet-snapshot' file, "
                                              r"expected a 'convnet-weights' file"):
        make_net().load(files["snapshot"])
    with pytest.raises(FileFormatError, match=r"w\.npz: is a 'convnet-weights' file, "
                                              r"expected a 'convnet-snapshot' file"):
        SGDSolver(make_net()).restore(files["weights"])
    from convnet import AdamSolver
    with pytest.raises(FileFormatError, match=r"snap\.npz: snapshot was written by a "
                                              r"SGDSolver, cannot restore it into a AdamSolver"):
        AdamSolver(make_net()).restore(files["snapshot"])


def test_failed_restore_leaves_the_solver_and_net_untouched(files, tmp_path):
    solver = SGDSolver(make_net())
    set_version(solver, 9)
    with open(files["snapshot"], "rb") as f:
        data = f.read()
    cut = str(tmp_path / "cut.npz")
    with open(cut, "wb") as f:
        f.write(data[: len(data) * 3 // 4])
    with pytest.raises(FileFormatError, match=r"cut\.npz"):
        solver.restore(cut)
    assert solver.iter == 9 and version_of_weights(solver.net, "net") == 9


def test_ctrl_c_during_training_exits_130_with_a_snapshot_to_resume_from(tmp_path):
    from convnet.models import deconvnet
    out = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=CONVNET_PATH, OMP_NUM_THREADS="1")
    child = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "train_segmentation.py"), "--solver",
         "sgd", "--iters", "100000", "--batch-size", "2", "--width", "4", "--train-images", "16",
         "--val-images", "4", "--out", out],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()           # "Training ..." once the run has started
    assert line.startswith("Training"), line + child.stderr.read()
    line = child.stdout.readline()           # "Iteration 1, ..." after the first step
    assert line.startswith("Iteration 1,"), line
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr
    snapshot = os.path.join(out, "snapshot.npz")
    assert f"--resume {snapshot}" in stdout
    solver = SGDSolver(deconvnet(5, width=4))
    with pytest.warns(UserWarning):          # no data iterator here to take its state
        solver.restore(snapshot)
    assert solver.iter >= 1


def rewritten(src, dst, change):
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("kind, key", [
    ("weights", "score/weight"), ("weights", "bn1/buffer:var"),
    ("snapshot", "net/score/weight"), ("snapshot", "history/0/score/bias")])
def test_a_mismatch_in_the_last_entry_changes_nothing(files, tmp_path, kind, key):
    """A shape error found late in the file must not leave the earlier entries loaded."""
    def change(arrays):
        assert key in arrays, sorted(arrays)
        arrays[key] = np.zeros(arrays[key].shape[:-1] + (arrays[key].shape[-1] + 1,),
                               arrays[key].dtype)
    bad = rewritten(files[kind], str(tmp_path / "late.npz"), change)
    solver = SGDSolver(make_net())
    set_version(solver, 9)
    with pytest.raises(FileFormatError, match=r"late\.npz: .*" + key.split("/")[-2]):
        if kind == "snapshot":
            solver.restore(bad)
        else:
            solver.net.load(bad)
    assert solver.iter == 9 and version_of_weights(solver.net, "net") == 9
    assert all(np.all(h[0] == 9) for h in solver.history_arrays())


def test_script_stopped_by_ctrl_c_and_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    script = os.path.join(ROOT, "scripts", "train_segmentation.py")
    env = dict(os.environ, PYTHONPATH=CONVNET_PATH, OMP_NUM_THREADS="1")
    small = ["--solver", "sgd", "--iters", "6", "--batch-size", "2", "--width", "4",
             "--train-images", "16", "--val-images", "4"]
    straight = subprocess.run([sys.executable, script, *small, "--out", "straight"],
                              cwd=str(tmp_path), env=env, capture_output=True, text=True,
                              timeout=300)
    assert straight.returncode == 0, straight.stderr

    child = subprocess.Popen([sys.executable, script, *small, "--out", "stopped"],
                             cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().startswith("Training")
    assert child.stdout.readline().startswith("Iteration 1,")
    child.send_signal(signal.SIGINT)
    child.communicate(timeout=120)
    if child.returncode == 0:
        pytest.skip("the run finished before Ctrl-C arrived")
    assert child.returncode == 130
    resumed = subprocess.run([sys.executable, script, *small, "--out", "stopped", "--resume",
                              os.path.join("stopped", "snapshot.npz")], cwd=str(tmp_path),
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # it did continue the stopped run (a no-op restore would also match the straight run)
    assert re.search(r"Resumed from .* at iteration [1-5]\b", resumed.stdout), resumed.stdout
    with np.load(tmp_path / "straight" / "weights.npz") as a, \
            np.load(tmp_path / "stopped" / "weights.npz") as b:
        keys = [k for k in a.files if k != "__format__"]
        assert keys and sorted(keys) == sorted(k for k in b.files if k != "__format__")
        for key in keys:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
