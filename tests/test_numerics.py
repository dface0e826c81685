"""Numerical faults: a NaN or Inf loss stops training with a DataError naming the iteration
(and, with Net(debug=True), the first layer whose output went non-finite), leaves the weights,
the BatchNorm statistics, the solver history and the last good snapshot exactly as they were;
the training script exits non-zero saying so; SoftmaxWithLoss stays finite at huge logits.
"""

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from convnet import AdamSolver, DataError, Net, SGDSolver
from convnet.layers import BatchNorm, Convolution, ReLU, SoftmaxWithLoss
from conftest import CONVNET_PATH

# NumPy's overflow / invalid-value notes on the poisoned batches are expected here
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_segmentation.py")


def make_net(debug=False, seed=0):
    """conv1 -> BatchNorm -> ReLU -> conv2 -> score -> SoftmaxWithLoss (float32)."""
    net = Net("numerics", debug=debug)
    layers = [Convolution(num_output=6, kernel_size=3, pad=1, name="conv1"),
              BatchNorm(name="bn1"), ReLU(name="relu1"),
              Convolution(num_output=6, kernel_size=3, pad=1, name="conv2"),
              Convolution(num_output=3, kernel_size=1, name="score")]
    for i, layer in enumerate(layers):
        layer.rng = np.random.default_rng(seed + i)
    net.add(layers[0], bottom=["data"], top=["c1"])
    net.add(layers[1], bottom=["c1"], top=["b1"])
    net.add(layers[2], bottom=["b1"], top=["b1"])
    net.add(layers[3], bottom=["b1"], top=["c2"])
    net.add(layers[4], bottom=["c2"], top=["score"])
    net.add(SoftmaxWithLoss(name="loss"), bottom=["score", "label"], top=["loss"])
    return net


def batch(seed):
    rng = np.random.default_rng(seed)
    return {"data": rng.standard_normal((2, 3, 7, 6)).astype(np.float32),
            "label": rng.integers(0, 3, (2, 7, 6))}


def state(solver):
    """Copies of the learnable state a failed step must not touch (BatchNorm's statistics:
    see test_failed_step_leaves_batchnorm_statistics_untouched)."""
    net = solver.net
    return {"params": [p.data.copy() for p in net.learnable_params],
            "history": solver.history_arrays(), "iter": solver.iter}


def assert_same_state(now, before):
    assert now["iter"] == before["iter"]
    for a, b in zip(now["params"], before["params"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(now["history"], before["history"]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def poison_data(value):
    bad = batch(2)
    bad["data"][1, 2, 3, 4] = value
    return bad


def poison_weight(solver, value):
    solver.net.layer("conv2").weight.data[1, 2, 0, 0] = value
    return batch(2)


CASES = [
    pytest.param(lambda s: poison_data(np.inf), "Convolution 'conv1' \\(top 'c1'\\)",
                 id="inf_in_data"),
    pytest.param(lambda s: poison_data(np.nan), "Convolution 'conv1' \\(top 'c1'\\)",
                 id="nan_in_data"),
    pytest.param(lambda s: poison_weight(s, np.nan), "Convolution 'conv2' \\(top 'c2'\\)",
                 id="nan_weight_in_conv2"),
]


@pytest.mark.parametrize("solver_class", [SGDSolver, AdamSolver])
@pytest.mark.parametrize("poison, first_layer", CASES)
def test_non_finite_loss_names_the_iteration_and_first_layer_and_keeps_the_weights(
        poison, first_layer, solver_class):
    solver = solver_class(make_net(debug=True), base_lr=0.01)
    solver.step(**batch(0))
    solver.step(**batch(1))
    inputs = poison(solver)
    before = state(solver)
    with pytest.raises(DataError, match=rf"{solver_class.__name__}: loss is (nan|inf) at "
                                        rf"iteration 2 \(no update applied, the weights are "
                                        rf"unchanged\); the first non-finite output came from "
                                        rf"{first_layer}"):
        solver.step(**inputs)
    assert_same_state(state(solver), before)


def test_without_debug_the_message_says_how_to_find_the_layer():
    solver = SGDSolver(make_net(debug=False))
    solver.step(**batch(0))
    with pytest.raises(DataError, match=r"SGDSolver: loss is nan at iteration 1 .*"
                                        r"Net\(debug=True\) names the first layer"):
        solver.step(**poison_data(np.nan))


def test_failed_step_leaves_batchnorm_statistics_untouched():
    solver = SGDSolver(make_net())
    solver.step(**batch(0))
    before = [b.copy() for _, b in solver.net.named_buffers()]
    with pytest.raises(DataError):
        solver.step(**poison_data(np.inf))
    for (key, now), b in zip(solver.net.named_buffers(), before):
        np.testing.assert_array_equal(now, b, err_msg=key)


def test_training_continues_after_a_refused_batch():
    solver = SGDSolver(make_net())
    solver.step(**batch(0))
    with pytest.raises(DataError, match="iteration 1"):
        solver.step(**poison_data(np.inf))
    loss = solver.step(**batch(1))
    assert np.isfinite(loss) and solver.iter == 2


def test_last_good_snapshot_is_intact_after_a_non_finite_loss(tmp_path):
    path = str(tmp_path / "snap.npz")
    solver = SGDSolver(make_net(), base_lr=0.01)
    solver.step(**batch(0))
    solver.snapshot(path)
    with open(path, "rb") as f:
        written = f.read()
    solver.step(**batch(1))
    with pytest.raises(DataError, match="iteration 2"):
        solver.step(**poison_data(np.nan))
    with open(path, "rb") as f:
        assert f.read() == written
    fresh = SGDSolver(make_net(seed=50), base_lr=0.01)
    fresh.restore(path)
    assert fresh.iter == 1
    assert np.isfinite(fresh.step(**batch(1)))


def test_exploding_learning_rate_stops_within_a_few_steps_leaving_the_last_weights():
    solver = SGDSolver(make_net(), base_lr=1e30, momentum=0.0, weight_decay=0.0)
    for _ in range(10):
        before = state(solver)
        try:
            solver.step(**batch(solver.iter))
        except DataError as exc:
            assert re.search(r"SGDSolver: (loss is (nan|inf)|the gradient of '[a-z0-9_]+/[a-z]+' "
                             r"is not finite) at iteration [1-9]", str(exc)), str(exc)
            break
    else:
        pytest.fail("ten steps at lr 1e30 never produced a non-finite loss or gradient")
    assert_same_state(state(solver), before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_is_exact_and_finite_at_logits_of_1e4(dtype):
    scores = np.zeros((2, 4, 3, 5), dtype)
    rng = np.random.default_rng(3)
    scores[...] = rng.choice([-1e4, 1e4, 0.0, 9999.5], scores.shape)
    labels = rng.integers(0, 4, (2, 3, 5))
    layer = SoftmaxWithLoss(name="sm", dtype=dtype)
    loss = layer.forward(scores, labels)
    grad, _ = layer.backward()
    # reference: log-sum-exp in float64 with the max subtracted, per pixel
    s = scores.astype(np.float64)
    m = s.max(axis=1, keepdims=True)
    logp = s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))
    picked = np.take_along_axis(logp, labels[:, None], axis=1)
    expected = -picked.sum() / labels.size
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    onehot = np.eye(4)[labels].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(grad, (np.exp(logp) - onehot) / labels.size, atol=1e-6)


def test_softmax_loss_of_a_wrong_class_at_1e4_margin_is_the_margin():
    scores = np.array([[[[1e4]], [[-1e4]]]], np.float32)      # (1, 2, 1, 1)
    layer = SoftmaxWithLoss(name="sm")
    assert layer.forward(scores, np.array([[[1]]])) == pytest.approx(2e4, rel=1e-6)
    grad, _ = layer.backward()
    np.testing.assert_allclose(grad.reshape(-1), [1.0, -1.0])


def test_batchnorm_of_a_constant_channel_stays_finite():
    x = np.full((4, 2, 3, 3), 7.0, np.float32)
    bn = BatchNorm(name="bn")
    y = bn.forward(x)
    dx = bn.backward(np.ones_like(y))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y, 0.0, atol=1e-6)


def run_script(args, cwd):
    env = dict(os.environ, PYTHONPATH=CONVNET_PATH, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_script_stops_with_status_1_on_a_non_finite_loss_and_keeps_the_snapshot(tmp_path):
    from convnet.models import deconvnet
    snapshot = str(tmp_path / "snapshot.npz")
    # a good snapshot of the script's default network (width 4), one step in
    net = deconvnet(5, width=4)
    rng = np.random.default_rng(0)
    solver = SGDSolver(net, base_lr=0.01, lr_policy="poly", power=0.9, max_iter=8)
    solver.step(data=rng.standard_normal((2, 3, 64, 64)).astype(np.float32),
                label=rng.integers(0, 5, (2, 64, 64)))
    solver.snapshot(snapshot)
    with open(snapshot, "rb") as f:
        written = f.read()
    bad = run_script(["--solver", "sgd", "--iters", "8", "--lr", "1e30", "--resume", snapshot,
                      "--batch-size", "2", "--width", "4", "--train-images", "16",
                      "--val-images", "4", "--out", str(tmp_path)], str(tmp_path))
    assert bad.returncode == 1, bad.stderr
    errors = [ln for ln in bad.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, bad.stderr
    assert "Traceback" not in bad.stderr
    assert re.search(r"SGDSolver: (loss is (nan|inf)|the gradient of '.*' is not finite) at "
                     r"iteration [2-7] \(no update applied", errors[0]), errors[0]
    assert f"the last good snapshot is kept at {snapshot}" in errors[0]
    with open(snapshot, "rb") as f:
        assert f.read() == written
