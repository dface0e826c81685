"""solver.prototxt: every field convnet uses, the solver it builds (Caffe's lr formulas), the
net it names, and bad files."""

import math
import os

import pytest

pytest.importorskip("google.protobuf")

from convnet import AdamSolver, SGDSolver, caffe  # noqa: E402
from convnet.errors import ConfigError, FileFormatError  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

SOLVER = """
net: "deeplab_v2.prototxt"
test_iter: 10
test_interval: 100
base_lr: 0.001
lr_policy: "poly"
power: 0.9
gamma: 0.1
stepsize: 2000
stepvalue: 100
stepvalue: 200
momentum: 0.9
weight_decay: 0.0005
max_iter: 6000
iter_size: 2
display: 20
snapshot: 2000
snapshot_prefix: "snapshots/deeplab"
solver_mode: GPU
random_seed: 7
type: "SGD"
"""


def test_every_field(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER)
    config = caffe.load_solver(str(path))
    assert (config.net, config.base_lr, config.lr_policy) == ("deeplab_v2.prototxt", 0.001,
                                                              "poly")
    assert config.power == pytest.approx(0.9) and config.gamma == pytest.approx(0.1)
    assert (config.stepsize, config.stepvalue, config.max_iter, config.iter_size) == (
        2000, [100, 200], 6000, 2)
    assert config.momentum == pytest.approx(0.9)
    assert config.weight_decay == pytest.approx(0.0005)
    assert (config.display, config.snapshot, config.snapshot_prefix) == (20, 2000,
                                                                         "snapshots/deeplab")
    assert (config.test_iter, config.test_interval, config.random_seed) == ([10], 100, 7)
    assert config.type == "SGD"


def test_builds_the_solver_with_caffe_lr_formulas():
    base = 'net: "x" base_lr: 0.01 max_iter: 100 momentum: 0.9 weight_decay: 0.001 '
    net = caffe.load_net(os.path.join(FIXTURES, "fcn8s_v2.prototxt"))
    cases = {
        'lr_policy: "step" gamma: 0.5 stepsize: 10': lambda it: 0.01 * 0.5 ** (it // 10),
        'lr_policy: "multistep" gamma: 0.1 stepvalue: 5 stepvalue: 20':
            lambda it: 0.01 * 0.1 ** ((it >= 5) + (it >= 20)),
        'lr_policy: "poly" power: 0.9': lambda it: 0.01 * (1 - it / 100) ** 0.9,
        'lr_policy: "exp" gamma: 0.99': lambda it: 0.01 * 0.99 ** it,
        'lr_policy: "inv" gamma: 0.001 power: 0.75':
            lambda it: 0.01 * (1 + 0.001 * it) ** -0.75,
        'lr_policy: "fixed"': lambda it: 0.01,
        'lr_policy: "sigmoid" gamma: -0.1 stepsize: 50':
            lambda it: 0.01 / (1 + math.exp(0.1 * (it - 50))),
    }
    for text, formula in cases.items():
        solver = caffe.load_solver(base + text).build(net)
        assert isinstance(solver, SGDSolver)
        assert solver.momentum == pytest.approx(0.9)
        assert solver.weight_decay == pytest.approx(0.001)
        for it in (0, 7, 30, 99):
            assert solver.lr_at(it) == pytest.approx(formula(it), rel=1e-6), text
    adam = caffe.load_solver(base + 'type: "Adam" momentum2: 0.99 delta: 1e-6').build(net)
    assert isinstance(adam, AdamSolver)
    assert (adam.momentum, adam.momentum2) == (pytest.approx(0.9), pytest.approx(0.99))
    old = caffe.load_solver(base + "solver_type: ADAM")
    assert old.type == "Adam"


def test_named_net_is_found_beside_the_solver(tmp_path):
    solver = os.path.join(FIXTURES, "..", "fixtures", "solver_deeplab.prototxt")
    config = caffe.load_solver(solver)
    with pytest.warns(caffe.CaffeLoadNote):
        net = config.load_net()
    assert net.caffe.phase == "TRAIN" and "loss" in net.outputs


@pytest.mark.parametrize("text,words", [
    ('net: "x" max_iter: 1', ["base_lr is required"]),
    ('net: "x" base_lr: 0.1', ["max_iter is required"]),
    ('base_lr: 0.1 max_iter: 1', ["names no net"]),
    ('net: "x" base_lr: 0.1 max_iter: 1 lr_policy: "cosine"', ["lr_policy 'cosine'"]),
    ('net: "x" base_lr: 0.1 max_iter: 1 lr_policy: "step"', ["needs gamma"]),
    ('net: "x" base_lr: 0.1 max_iter: 1 type: "AdaGrad"', ["AdaGrad", "SGD and Adam"]),
    ('net: "x" base_lr: 0.1 max_iter: 1 regularization_type: "L1"', ["L1"]),
    ('net: "x" base_lr: 0.1 max_iter: 1 clip_gradients: 10', ["clip_gradients"]),
])
def test_bad_solver_values(text, words):
    with pytest.raises(ConfigError) as info:
        caffe.load_solver(text)
    for word in words:
        assert word in str(info.value)


def test_bad_solver_field_names_the_line():
    with pytest.raises(FileFormatError, match=r"<text>:2.*learning_rate"):
        caffe.load_solver('net: "x"\nlearning_rate: 0.1')
