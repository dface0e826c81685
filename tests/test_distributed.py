"""Data-parallel training over MPI (convnet.distributed).

The MPI tests launch ``mpiexec -n 2`` and ``-n 3`` (the mpiexec beside the interpreter: the
mpich wheel's) on tests/distributed_worker.py in subprocesses with timeouts, and compare the
ranks' weights with one process trained here on the whole batch (tests/distributed_case.py).
They skip, with the reason, when mpi4py is not installed. The hooks the layers expose
(Layer._reduce_stats, BatchIterator.next_batch(part=)) are checked in this process with
simulated ranks, and need no MPI.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import CONVNET_PATH

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from distributed_case import RandomScenes, make_solver  # noqa: E402

from convnet.data import BatchIterator, split_range  # noqa: E402
from convnet.layers import BatchNorm, EuclideanLoss, SoftmaxWithLoss  # noqa: E402
from convnet.testing import check_gradients  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
SCRIPT = os.path.join(ROOT, "scripts", "train_segmentation.py")


def find_mpiexec():
    """The mpiexec of the MPI that mpi4py uses: the mpich wheel puts it beside python."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
if importlib.util.find_spec("mpi4py") is None:
    NO_MPI = 'mpi4py is not installed (pip install ".[mpi]")'
elif MPIEXEC is None:
    NO_MPI = "no mpiexec beside the interpreter or on PATH"
else:
    NO_MPI = None
needs_mpi = pytest.mark.skipif(NO_MPI is not None, reason=NO_MPI or "")


def env(**extra):
    out = dict(os.environ, PYTHONPATH=CONVNET_PATH, OMP_NUM_THREADS="1",
               OMP_WAIT_POLICY="PASSIVE")
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def launch(args, timeout, environ=None, cwd=ROOT):
    """Run a command in its own session; on timeout kill the whole group (mpiexec and its
    ranks) and fail: a hang is a failure, never a stuck test run. ``cwd``: outside the
    checkout for ``python -c`` (its first path entry is the working folder)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environ or env(), start_new_session=True, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(args[:4])}... hung for {timeout} s:\n{err[-2000:]}")
    return proc.returncode, out, err


def mpi_worker(ranks, mode, config, out_dir, timeout=60, environ=None):
    return launch([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", WORKER, mode,
                   json.dumps(config), str(out_dir)], timeout, environ)


def train_ranks(ranks, config, out_dir, environ=None):
    """Train with ``ranks`` MPI ranks; returns (weights, report)."""
    out_dir.mkdir(exist_ok=True)
    rc, out, err = mpi_worker(ranks, "train", config, out_dir, environ=environ)
    assert rc == 0, f"{ranks}-rank job failed ({rc}):\n{out[-1000:]}\n{err[-3000:]}"
    with open(out_dir / "report.json") as f:
        report = json.load(f)
    return dict(np.load(out_dir / "ranks.npz")), report


def train_one_process(config, steps=None, resume=None):
    solver = make_solver(config)
    if resume:
        solver.restore(resume)
    losses = [solver.step() for _ in range(config["steps"] if steps is None else steps)]
    return solver.net.state_arrays(), losses


def worst_relative(ref, got):
    """max over arrays of max |ref - got| / max |ref| (floor 1e-3: arrays near zero)."""
    assert sorted(ref) == sorted(got)
    return max(float(np.max(np.abs(ref[k] - got[k]))) / max(float(np.max(np.abs(ref[k]))),
                                                            1e-3) for k in ref)


TOL = {"float64": 1e-10, "float32": 1e-5}


# ---------------------------------------------------------------------- K ranks == 1 process
@needs_mpi
@pytest.mark.parametrize("ranks, config", [
    # uneven parts (3 + 2 images), several buckets, a step lr policy
    (2, dict(dtype="float64", batch=5, steps=4, lr_policy="step", bucket_mb=0.001)),
    # Adam, iter_size 2 (reduced on the second pass only), parts of 2, 2 and 1 images
    (3, dict(dtype="float64", batch=5, steps=3, solver="adam", iter_size=2,
             lr_policy="step")),
    (3, dict(dtype="float32", batch=6, steps=4, bucket_mb=0.0005)),
    (2, dict(dtype="float32", batch=6, steps=4, solver="adam")),
])
def test_ranks_train_as_one_process_on_the_whole_batch(tmp_path, ranks, config):
    got, report = train_ranks(ranks, config, tmp_path / "run")
    ref, losses = train_one_process(config)
    assert worst_relative(ref, got) < TOL[config["dtype"]]
    np.testing.assert_allclose(report["losses"], losses, rtol=TOL[config["dtype"]])
    assert report["ranks"] == ranks and report["iter"] == config["steps"]
    if config.get("bucket_mb", 1.0) < 0.01:
        assert len(report["buckets"]) > 1       # reduced in several buckets...
    # ...each started from the backward hook of its last layer, before backward ended
    assert report["overlapped"] == len(report["buckets"]) * config["steps"]


@needs_mpi
def test_without_sync_batchnorm_statistics_are_each_ranks_own(tmp_path):
    config = dict(dtype="float64", batch=4, steps=1, sync=False, threads=None)
    got, report = train_ranks(2, config, tmp_path / "run", environ=env(OMP_NUM_THREADS=None))
    # threads=None and no OMP_NUM_THREADS: cores / ranks on this node
    assert report["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    # the saved averages are rank 0's: one forward of the initial net on rank 0's half
    solver = make_solver(config)
    batch = solver.data.next_batch(part=(0, 2))
    solver.net.forward(**batch)
    mean = solver.net.layer("bn1").buffers["mean"]
    np.testing.assert_allclose(got["bn1/buffer:mean"], mean, rtol=1e-12, atol=1e-15)
    whole, _ = train_one_process(dict(config, sync=True))
    assert not np.allclose(got["bn1/buffer:mean"], whole["bn1/buffer:mean"])


@needs_mpi
def test_snapshot_of_two_ranks_resumes_on_one_and_three(tmp_path):
    config = dict(dtype="float64", batch=6, steps=3, solver="adam", lr_policy="step")
    snap = str(tmp_path / "snap.npz")
    train_ranks(2, dict(config, snapshot=snap), tmp_path / "first")
    ref, _ = train_one_process(config, steps=6)
    for ranks in (1, 3):
        got, report = train_ranks(ranks, dict(config, resume=snap), tmp_path / f"resume{ranks}")
        assert report["iter"] == 6
        assert worst_relative(ref, got) < 1e-10, f"resumed on {ranks} rank(s)"
    plain, _ = train_one_process(config, resume=snap)    # and without MPI at all
    assert worst_relative(ref, plain) < 1e-10


# ---------------------------------------------------------------------- failures end the job
@needs_mpi
@pytest.mark.parametrize("ranks, kill", [(2, False), (3, True)])
def test_a_failing_rank_ends_the_job(tmp_path, ranks, kill):
    config = dict(dtype="float64", batch=6, steps=5, bad_rank=ranks - 1, bad_step=2, kill=kill)
    rc, out, err = mpi_worker(ranks, "fail", config, tmp_path, timeout=60)
    assert rc != 0
    if not kill:
        assert "fails on purpose" in err
    assert not (tmp_path / "report.json").exists()


@needs_mpi
def test_debug_mode_stops_every_rank_when_replicas_differ(tmp_path):
    config = dict(dtype="float64", batch=4, steps=3)
    rc, out, err = mpi_worker(2, "diverge", config, tmp_path, timeout=60)
    assert rc != 0
    assert "replicas differ after iteration 2: 'conv2/weight' on rank(s) [1]" in err


@needs_mpi
def test_refusals_name_what_to_change(tmp_path):
    rc, _, err = mpi_worker(3, "refuse", dict(batch=2), tmp_path)
    assert rc == 0, err[-3000:]
    with open(tmp_path / "report.json") as f:
        empty, small, option = json.load(f)["messages"]
    assert empty.startswith("StateError: ") and "DistributedSolver" in empty \
        and "net.setup" in empty
    assert small == ("ConfigError: ShardedBatches: the global batch_size (2) must be at least "
                     "the number of ranks (3): every rank needs one image")
    assert option == ("ConfigError: DistributedSolver: sync_batchnorm must be None, True or "
                      "False, got 'yes'")


# ---------------------------------------------------------------------- the training script
@needs_mpi
def test_train_script_distributed_matches_one_process(tmp_path):
    flags = ["--solver", "sgd", "--iters", "3", "--batch-size", "5", "--width", "4",
             "--train-images", "12", "--val-images", "4"]
    rc, out, err = launch([MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", SCRIPT,
                           "--distributed", *flags, "--out", str(tmp_path / "two")], 120)
    assert rc == 0, err[-3000:]
    assert out.count("Training deconvnet") == 1         # only rank 0 prints
    assert "2 ranks x 1 threads; waited" in out
    assert (tmp_path / "two" / "predictions.png").exists()
    rc, _, err = launch([sys.executable, SCRIPT, *flags, "--out", str(tmp_path / "one")], 120)
    assert rc == 0, err[-3000:]
    one = dict(np.load(tmp_path / "one" / "weights.npz"))
    two = dict(np.load(tmp_path / "two" / "weights.npz"))
    del one["__format__"], two["__format__"]
    assert worst_relative(one, two) < 1e-5


def test_without_mpi4py_distributed_is_a_clear_error(tmp_path):
    fake = tmp_path / "fake" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mpi4py')\n")
    environ = env(PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), CONVNET_PATH]))
    rc, _, err = launch([sys.executable, "-c", "import convnet.distributed"], 60, environ,
                        cwd=str(tmp_path))
    assert rc != 0 and 'pip install ".[mpi]"' in err
    rc, _, err = launch([sys.executable, SCRIPT, "--distributed", "--iters", "1",
                         "--out", str(tmp_path / "out")], 60, environ)
    assert rc == 2
    assert '--distributed: convnet.distributed needs mpi4py and an MPI library: pip install ' \
           '".[mpi]"' in err


# ---------------------------------------------------------------------- hooks, simulated ranks
def test_backward_hooks_see_each_layer_with_its_diffs_complete():
    solver = make_solver(dict(batch=2))
    net = solver.net
    seen = []

    def hook(layer):
        seen.append(None if layer is None else
                    (layer.name, [p.diff.copy() for p in layer.params]))

    net.backward_hooks.append(hook)
    net.forward(**solver.data.next_batch())
    net.zero_diffs()
    net.backward()
    assert seen[-1] is None
    names = [entry[0] for entry in seen[:-1]]
    assert names == [layer.name for layer in reversed(net.layers)
                     if layer.name in names] and names[0] == "loss" and "conv1" in names
    for name, diffs in seen[:-1]:       # nothing adds into a layer's diffs after its hook
        for before, p in zip(diffs, net.layer(name).params):
            np.testing.assert_array_equal(before, p.diff)


def simulate_ranks(parts, run):
    """Run ``run(k, reducer)`` for each part k as if the parts were ranks whose reducers
    sum their stats: repeated until every call's answer is the sum of what the parts passed
    (each round answers the calls with the previous round's sums)."""
    answers = []
    for _ in range(10):
        calls = [[] for _ in parts]
        results = []
        for k in range(len(parts)):
            def reducer(stats, k=k):
                i = len(calls[k])
                calls[k].append(np.array(stats, dtype=np.float64))
                return answers[i].copy() if i < len(answers) else calls[k][i]
            results.append(run(k, reducer))
        sums = [sum(c[i] for c in calls) for i in range(len(calls[0]))]
        if len(sums) == len(answers) and all(np.array_equal(a, b)
                                             for a, b in zip(sums, answers)):
            return results
        answers = sums
    raise AssertionError("simulated reductions did not settle")


def test_sync_batchnorm_equals_batchnorm_over_the_whole_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4, 3)) * 2 + 1
    dy = rng.standard_normal(x.shape)
    parts = [split_range(len(x), k, 3) for k in range(3)]
    whole = BatchNorm(moving_average_fraction=0.5, dtype=np.float64, name="bn")
    y = whole.forward(x)
    dx = whole.backward(dy)

    def run(k, reducer):
        lo, hi = parts[k]
        bn = BatchNorm(moving_average_fraction=0.5, dtype=np.float64, sync=True, name="bn")
        bn.stats_reducer = reducer
        return bn, bn.forward(x[lo:hi]), bn.backward(dy[lo:hi])

    results = simulate_ranks(parts, run)
    np.testing.assert_allclose(np.concatenate([r[1] for r in results]), y, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([r[2] for r in results]), dx, atol=1e-12)
    for i in range(2):      # scale and bias diffs: each rank's share, summed over ranks
        np.testing.assert_allclose(sum(r[0].params[i].diff for r in results),
                                   whole.params[i].diff, atol=1e-12)
    for key in ("mean", "var"):
        np.testing.assert_allclose(results[0][0].buffers[key], whole.buffers[key], atol=1e-12)


def test_sync_batchnorm_in_one_process_is_batchnorm():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 5, 4)) + 3
    plain = BatchNorm(dtype=np.float64)
    synced = BatchNorm(dtype=np.float64, sync=True)
    np.testing.assert_allclose(synced.forward(x), plain.forward(x), atol=1e-12)
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(synced.backward(dy), plain.backward(dy), atol=1e-12)
    check_gradients(BatchNorm(dtype=np.float64, sync=True), x)


@pytest.mark.parametrize("normalization", SoftmaxWithLoss.NORMALIZATIONS)
def test_losses_normalise_by_the_whole_batch_across_ranks(normalization):
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((5, 3, 4, 2))
    labels = rng.integers(0, 3, (5, 4, 2))
    labels[rng.random(labels.shape) < 0.3] = 255
    labels[4] = 255                             # a rank with every pixel ignored
    parts = [split_range(5, k, 3) for k in range(3)]

    def layer():
        return SoftmaxWithLoss(ignore_label=255, normalization=normalization, dtype=np.float64)

    whole = layer()
    loss = whole.forward(scores, labels)
    grad = whole.backward()[0]

    def run(k, reducer):
        lo, hi = parts[k]
        part = layer()
        part.stats_reducer = reducer
        return part.forward(scores[lo:hi], labels[lo:hi]), part.backward()[0]

    results = simulate_ranks(parts, run)
    for value, _ in results:
        assert value == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(np.concatenate([g for _, g in results]), grad, atol=1e-15)

    a, b = rng.standard_normal((2, 5, 3))
    euclid = EuclideanLoss(dtype=np.float64)
    value = euclid.forward(a, b)
    da = euclid.backward()[0]

    def run_euclid(k, reducer):
        lo, hi = parts[k]
        part = EuclideanLoss(dtype=np.float64)
        part.stats_reducer = reducer
        return part.forward(a[lo:hi], b[lo:hi]), part.backward()[0]

    results = simulate_ranks(parts, run_euclid)
    assert all(v == pytest.approx(value, rel=1e-13) for v, _ in results)
    np.testing.assert_allclose(np.concatenate([g for _, g in results]), da, atol=1e-15)


def test_batch_parts_tile_the_global_batch_for_any_rank_count():
    assert [split_range(7, k, 3) for k in range(3)] == [(0, 2), (2, 4), (4, 7)]
    for ranks in (1, 2, 3, 5):
        whole = BatchIterator(RandomScenes(count=7), 5, seed=1, augment=True)
        parts = [BatchIterator(RandomScenes(count=7), 5, seed=1, augment=True)
                 for _ in range(ranks)]
        for _ in range(4):      # crosses epoch boundaries (7 images, batches of 5)
            expected = whole.next_batch()
            got = [p.next_batch(part=(k, ranks)) for k, p in enumerate(parts)]
            for key in ("data", "label"):
                np.testing.assert_array_equal(np.concatenate([g[key] for g in got]),
                                              expected[key])
        assert all(p.get_state() == whole.get_state() for p in parts)
