"""convnet.testing.check_gradients: passes correct layers, names the worst wrong element."""

import re

import numpy as np
import pytest

from convnet.layers import Convolution
from convnet.layers.base import Layer
from convnet.testing import GradientCheckError, check_gradients


class _Square(Layer):
    """y = w * x**2 with a learnable scalar w; ``bad`` plants an error in one gradient."""

    def __init__(self, bad=None, at=(0, 1, 2, 3), **kw):
        self.bad = bad
        self.at = at
        super().__init__(dtype=np.float64, **kw)

    def _reshape(self, shapes):
        if not self.params:
            self._add_param("weight", np.full((1,), 1.5))
        return shapes[0]

    def _forward(self, bottoms):
        self._x = bottoms[0]
        return [self.params[0].data[0] * self._x ** 2]

    def _backward(self, top_diffs, propagate_down):
        dy = top_diffs[0]
        dx = 2 * self.params[0].data[0] * self._x * dy
        if self.bad == "bottom":
            dx[self.at] += 0.5
        dw = np.sum(self._x ** 2 * dy)
        if self.bad == "param":
            dw *= 1.01
        self.params[0].diff[0] += dw
        return [dx]


def _x():
    return np.random.default_rng(0).standard_normal((2, 3, 4, 5))


def _message(excinfo):
    # index tuples may print their elements as np.int64(1) on NumPy 2
    return re.sub(r"np\.int64\((\d+)\)", r"\1", str(excinfo.value))


@pytest.mark.parametrize("exhaustive", [False, True])
def test_correct_layers_pass(exhaustive):
    report = check_gradients(_Square(name="sq"), _x(), exhaustive=exhaustive)
    labels = [entry[0] for entry in report.entries]
    assert labels == ["bottom 0", "param 0 (weight)"]
    assert all(err <= allowed for _, err, allowed, _ in report.entries)
    conv = Convolution(3, (3, 2), stride=2, pad=1, group=3, dtype=np.float64)
    check_gradients(conv, np.random.default_rng(1).standard_normal((2, 3, 5, 4)))


@pytest.mark.parametrize("exhaustive", [False, True])
def test_a_wrong_bottom_gradient_is_caught_and_located(exhaustive):
    layer = _Square(bad="bottom", at=(1, 2, 0, 3), name="sq")
    with pytest.raises(GradientCheckError) as excinfo:
        check_gradients(layer, _x(), exhaustive=exhaustive)
    assert re.match(r"_Square 'sq': gradient of bottom 0 is off at index \(1, 2, 0, 3\) "
                    r"\(numeric .*, analytic .*\)", _message(excinfo))


def test_a_wrong_param_gradient_is_caught_and_named():
    with pytest.raises(GradientCheckError) as excinfo:
        check_gradients(_Square(bad="param", name="sq"), _x())
    assert "gradient of param 0 (weight) is off at index (0,)" in _message(excinfo)


def test_param_diffs_are_restored_and_lr_mult_zero_is_not_checked():
    layer = _Square(bad="param", param=[dict(lr_mult=0)])
    layer.setup((2, 3, 4, 5))
    layer.params[0].diff[0] = 42.0
    report = check_gradients(layer, _x())
    assert [entry[0] for entry in report.entries] == ["bottom 0"]
    assert layer.params[0].diff[0] == 42.0


def test_propagate_down_false_checks_params_only():
    report = check_gradients(_Square(bad="bottom"), _x(), propagate_down=[False])
    assert [entry[0] for entry in report.entries] == ["param 0 (weight)"]
