"""SGDSolver / AdamSolver: Caffe's update rule against hand-written references, lr policies
against Caffe's formulas, iter_size, safety checks (zero weights, non-finite loss or
gradient), and PyTorch cross-checks of whole training runs."""

import math
import warnings

import numpy as np
import pytest

from convnet import AdamSolver, ConfigError, DataError, Net, SGDSolver, StateError
from convnet.layers import Convolution, EuclideanLoss, Layer, ReLU, SoftmaxWithLoss
from convnet.solvers import ZeroWeightWarning

F64 = np.float64


def conv(num_output, kernel_size, seed, dtype=F64, **kw):
    kw.setdefault("bias_filler", dict(type="gaussian", std=0.1))
    layer = Convolution(num_output=num_output, kernel_size=kernel_size, dtype=dtype, **kw)
    layer.rng = np.random.default_rng(seed)
    return layer


def make_net(dtype=F64, param1=None, param2=None, weight_filler="msra", debug=False):
    """conv 3x3 (pad 1) -> ReLU -> conv 1x1 -> SoftmaxWithLoss; input (N, 2, 4, 5)."""
    net = Net("solver_test", debug=debug)
    net.add(conv(4, 3, 1, dtype, pad=1, name="conv1", param=param1,
                 weight_filler=weight_filler), bottom=["data"], top=["conv1"])
    net.add(ReLU(dtype=dtype, name="relu1"), bottom=["conv1"], top=["conv1"])
    net.add(conv(3, 1, 2, dtype, name="conv2", param=param2), bottom=["conv1"],
            top=["score"])
    net.add(SoftmaxWithLoss(dtype=dtype, name="loss"), bottom=["score", "label"],
            top=["loss"])
    return net


def make_batches(count, n=2, seed=5):
    rng = np.random.default_rng(seed)
    return [{"data": rng.standard_normal((n, 2, 4, 5)), "label": rng.integers(0, 3, (n, 4, 5))}
            for _ in range(count)]


class ListData:
    """Deterministic data: cycles through a list of batches; state = position."""

    def __init__(self, batches):
        self.batches = batches
        self.position = 0

    def next_batch(self):
        b = self.batches[self.position % len(self.batches)]
        self.position += 1
        return b

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def reference_gradients(ref_net, batches):
    """Summed param gradients over ``batches`` (what the solver accumulates), by key, and
    the mean loss."""
    ref_net.zero_diffs()
    losses = []
    for b in batches:
        ref_net.forward(**b)
        losses.append(ref_net.loss)
        ref_net.backward()
    return {k: p.diff.copy() for k, p in ref_net.named_params()}, float(np.mean(losses))


def copy_weights(src, dst):
    for (_, a), (_, b) in zip(src.named_params(), dst.named_params()):
        b.data[...] = a.data


# ---------------------------------------------------------------- lr policies

POLICIES = [
    ("fixed", {}, lambda it: 0.1),
    ("step", dict(gamma=0.5, stepsize=10), lambda it: 0.1 * 0.5 ** math.floor(it / 10)),
    ("multistep", dict(gamma=0.3, stepvalues=[5, 10, 20]),
     lambda it: 0.1 * 0.3 ** sum(it >= v for v in (5, 10, 20))),
    ("exp", dict(gamma=0.97), lambda it: 0.1 * 0.97 ** it),
    ("inv", dict(gamma=1e-2, power=0.75), lambda it: 0.1 * (1 + 1e-2 * it) ** -0.75),
    ("poly", dict(max_iter=100, power=0.5), lambda it: 0.1 * (1 - it / 100) ** 0.5),
    ("sigmoid", dict(gamma=-0.2, stepsize=12),
     lambda it: 0.1 * (1 / (1 + math.exp(0.2 * (it - 12))))),
]


@pytest.mark.parametrize("policy,kwargs,formula", POLICIES, ids=[p[0] for p in POLICIES])
def test_lr_policy_follows_caffes_formula(policy, kwargs, formula):
    solver = SGDSolver(make_net(), base_lr=0.1, lr_policy=policy, **kwargs)
    for it in (0, 1, 4, 5, 9, 10, 11, 19, 20, 21, 37, 99):
        assert solver.lr_at(it) == pytest.approx(formula(it), rel=1e-14), it
    solver.iter = 11
    assert solver.lr == pytest.approx(formula(11), rel=1e-14)


def test_poly_policy_reaches_zero_at_max_iter_and_stays_there():
    solver = SGDSolver(make_net(), base_lr=0.1, lr_policy="poly", max_iter=10, power=2.0)
    assert solver.lr_at(10) == 0.0 and solver.lr_at(15) == 0.0
    assert solver.lr_at(9) == pytest.approx(0.1 * 0.1 ** 2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr_policy="cosine"), "lr_policy must be one of fixed, step, multistep, exp, inv, "
                               "poly, sigmoid, got 'cosine'"),
    (dict(lr_policy="step"), "lr_policy 'step' needs stepsize"),
    (dict(lr_policy="step", stepsize=0), "stepsize must be >= 1, got 0"),
    (dict(lr_policy="multistep"), "lr_policy 'multistep' needs stepvalues"),
    (dict(lr_policy="multistep", stepvalues=[10, 5]), "stepvalues must be non-negative and "
                                                      "strictly increasing, got \\[10, 5\\]"),
    (dict(lr_policy="poly"), "lr_policy 'poly' needs max_iter"),
    (dict(lr_policy="exp", gamma=0.0), "lr_policy 'exp' needs gamma > 0, got 0.0"),
    (dict(base_lr=-0.1), "base_lr must be >= 0.0, got -0.1"),
    (dict(momentum=-1), "momentum must be >= 0.0, got -1"),
    (dict(weight_decay=float("nan")), "weight_decay must be finite, got nan"),
    (dict(iter_size=0), "iter_size must be >= 1, got 0"),
    (dict(iter_size=1.5), "iter_size must be an int, got 1.5"),
    (dict(data=[1, 2]), "data must have a next_batch\\(\\) method"),
])
def test_bad_sgd_settings_raise_config_error_naming_the_parameter(kwargs, message):
    with pytest.raises(ConfigError, match="SGDSolver: " + message):
        SGDSolver(make_net(), **kwargs)


def test_bad_adam_settings_and_non_net_raise_config_error():
    with pytest.raises(ConfigError, match="AdamSolver: momentum2 \\(beta2\\) must be in "
                                          "\\[0, 1\\), got 1.0"):
        AdamSolver(make_net(), momentum2=1.0)
    with pytest.raises(ConfigError, match="AdamSolver: delta must be > 0.0, got 0"):
        AdamSolver(make_net(), delta=0)
    with pytest.raises(ConfigError, match="SGDSolver: the first argument must be a "
                                          "convnet.Net, got list"):
        SGDSolver([])


def test_step_needs_inputs_or_data_and_iter_size_needs_data():
    with pytest.raises(StateError, match="step\\(\\) needs the net's inputs by name"):
        SGDSolver(make_net()).step()
    with pytest.raises(ConfigError, match="iter_size=2 accumulates 2 batches per step"):
        SGDSolver(make_net(), iter_size=2).step(**make_batches(1)[0])


# ---------------------------------------------------------------- update rules

def sgd_reference(ref, grads, lr, momentum, wd, history, iter_size):
    """Caffe's SGD update written out: v = m v + lr lr_mult (g/iter_size + wd decay_mult w);
    w -= v (params with lr_mult 0 untouched)."""
    for key, p in ref.named_params():
        if p.lr_mult == 0:
            continue
        g = grads[key] / iter_size + wd * p.decay_mult * p.data
        history[key] = momentum * history[key] + lr * p.lr_mult * g
        p.data -= history[key]


@pytest.mark.parametrize("iter_size", [1, 2])
def test_sgd_update_matches_the_hand_written_reference(iter_size):
    specs = dict(param1=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                 param2=[dict(lr_mult=0.5, decay_mult=3), dict(lr_mult=0)])
    net, ref = make_net(**specs), make_net(**specs)
    batches = make_batches(3 * iter_size)
    net.forward(**batches[0])
    ref.forward(**batches[0])
    copy_weights(net, ref)
    solver = SGDSolver(net, base_lr=0.05, momentum=0.8, weight_decay=0.01, lr_policy="step",
                       gamma=0.5, stepsize=2, iter_size=iter_size, data=ListData(batches))
    history = {k: np.zeros_like(p.data) for k, p in ref.named_params()}
    frozen = ref.layer("conv2").params[1].data.copy()
    for it in range(3):
        chunk = batches[it * iter_size:(it + 1) * iter_size]
        grads, expected_loss = reference_gradients(ref, chunk)
        loss = solver.step()
        assert loss == pytest.approx(expected_loss, rel=1e-12)
        sgd_reference(ref, grads, 0.05 * 0.5 ** (it // 2), 0.8, 0.01, history, iter_size)
        for (key, p), (_, q) in zip(net.named_params(), ref.named_params()):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-12, atol=1e-14, err_msg=key)
    assert solver.iter == 3
    np.testing.assert_array_equal(net.layer("conv2").params[1].data, frozen)


def adam_reference(ref, grads, lr, b1, b2, delta, wd, state, t):
    """Caffe's Adam written out (t = iter + 1, correction sqrt(1-b2^t)/(1-b1^t))."""
    for key, p in ref.named_params():
        if p.lr_mult == 0:
            continue
        g = grads[key] + wd * p.decay_mult * p.data
        m, v = state[key]
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        state[key] = (m, v)
        correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p.data -= lr * p.lr_mult * correction * m / (np.sqrt(v) + delta)


def test_adam_update_matches_the_hand_written_reference():
    specs = dict(param1=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)])
    net, ref = make_net(**specs), make_net(**specs)
    batches = make_batches(4)
    net.forward(**batches[0])
    ref.forward(**batches[0])
    copy_weights(net, ref)
    solver = AdamSolver(net, base_lr=0.01, momentum=0.85, momentum2=0.99, delta=1e-6,
                        weight_decay=0.02, lr_policy="inv", gamma=0.1, power=0.5)
    state = {k: (0.0, 0.0) for k, _ in ref.named_params()}
    for it, b in enumerate(batches):
        grads, _ = reference_gradients(ref, [b])
        solver.step(**b)
        adam_reference(ref, grads, 0.01 * (1 + 0.1 * it) ** -0.5, 0.85, 0.99, 1e-6, 0.02,
                       state, it + 1)
        for (key, p), (_, q) in zip(net.named_params(), ref.named_params()):
            np.testing.assert_allclose(p.data, q.data, rtol=1e-11, atol=1e-13, err_msg=key)


@pytest.mark.parametrize("solver_class", [SGDSolver, AdamSolver])
def test_iter_size_two_half_batches_equals_one_full_batch(solver_class):
    halves = make_batches(6, n=2, seed=8)
    full = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(halves[::2],
                                                                           halves[1::2])]
    a, b = make_net(), make_net()
    sa = solver_class(a, base_lr=0.05, weight_decay=0.01, iter_size=2, data=ListData(halves))
    sb = solver_class(b, base_lr=0.05, weight_decay=0.01, data=ListData(full))
    for _ in range(3):
        assert sa.step() == pytest.approx(sb.step(), rel=1e-12)
    for (key, p), (_, q) in zip(a.named_params(), b.named_params()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-11, atol=1e-13, err_msg=key)


def test_float32_net_trains_with_float32_history():
    net = make_net(dtype=np.float32)
    solver = SGDSolver(net, base_lr=0.1, data=ListData(make_batches(3)))
    losses = [solver.step() for _ in range(12)]
    assert losses[-1] < losses[0]
    assert all(h.dtype == np.float32 for slots in solver.history_arrays() for h in slots)
    assert all(p.data.dtype == np.float32 for p in net.learnable_params)


# ---------------------------------------------------------------- safety checks

def test_all_zero_learnable_weight_warns_at_the_first_step_only():
    net = make_net(weight_filler=0.0)
    solver = SGDSolver(net, data=ListData(make_batches(2)))
    with pytest.warns(ZeroWeightWarning, match="learnable weight 'conv1/weight' "
                                               "\\(Convolution, 4x2x3x3\\) is all zeros at "
                                               "the first step") as record:
        solver.step()
    assert len(record) == 1      # zero biases (1-d) are normal and not reported
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver.step()


def test_frozen_zero_weight_does_not_warn():
    net = make_net(weight_filler=0.0, param1=[dict(lr_mult=0), dict(lr_mult=0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SGDSolver(net, data=ListData(make_batches(1))).step()


@pytest.mark.parametrize("debug", [False, True])
def test_non_finite_loss_raises_before_the_update_naming_the_iteration(debug):
    net = make_net(debug=debug)
    batches = make_batches(2)
    solver = SGDSolver(net, base_lr=0.1)
    solver.step(**batches[0])
    weights = [p.data.copy() for p in net.learnable_params]
    history = solver.history_arrays()
    bad = dict(batches[1], data=batches[1]["data"].copy())
    bad["data"][0, 1, 2, 3] = np.nan
    where = ("the first non-finite output came from Convolution 'conv1' \\(top 'conv1'\\)"
             if debug else "Net\\(debug=True\\) names the first layer")
    with pytest.raises(DataError, match="SGDSolver: loss is nan at iteration 1 \\(no update "
                                        "applied, the weights are unchanged\\); " + where):
        solver.step(**bad)
    for p, w in zip(net.learnable_params, weights):
        np.testing.assert_array_equal(p.data, w)
    for now, before in zip(solver.history_arrays(), history):
        np.testing.assert_array_equal(now[0], before[0])
    assert solver.iter == 1


class InfGradient(Layer):
    """Identity forward; an infinite gradient backward (finite loss, broken backward)."""

    def __init__(self, **kw):
        self.in_place = False
        super().__init__(**kw)

    def _reshape(self, shapes):
        return shapes[0]

    def _forward(self, bottoms):
        return [bottoms[0].copy()]

    def _backward(self, top_diffs, propagate_down):
        return [top_diffs[0] * np.inf]


def test_non_finite_gradient_raises_before_the_update():
    net = Net()
    net.add(conv(2, 1, 0, name="c1"), bottom=["data"], top=["c1"])
    net.add(InfGradient(dtype=F64, name="inf"), bottom=["c1"], top=["y"])
    net.add(EuclideanLoss(dtype=F64, name="l"), bottom=["y", "t"], top=["l"])
    rng = np.random.default_rng(0)
    inputs = {"data": rng.standard_normal((1, 2, 3, 3)), "t": rng.standard_normal((1, 2, 3, 3))}
    net.forward(**inputs)
    before = net.layer("c1").params[0].data.copy()
    with pytest.raises(DataError, match="the gradient of 'c1/weight' is not finite at "
                                        "iteration 0"):
        SGDSolver(net).step(**inputs)
    np.testing.assert_array_equal(net.layer("c1").params[0].data, before)


# ---------------------------------------------------------------- PyTorch cross-checks

def torch_model(net):
    torch = pytest.importorskip("torch")
    params = [torch.nn.Parameter(torch.from_numpy(p.data.copy()))
              for p in net.learnable_params]

    def loss_fn(b):
        x = torch.from_numpy(b["data"])
        h = torch.relu(torch.nn.functional.conv2d(x, params[0], params[1], padding=1))
        score = torch.nn.functional.conv2d(h, params[2], params[3])
        return torch.nn.functional.cross_entropy(score, torch.from_numpy(b["label"]))
    return torch, params, loss_fn


def test_sgd_follows_torch_sgd_loss_curve():
    batches = make_batches(6, n=3, seed=11)
    net = make_net()
    net.forward(**batches[0])
    torch, params, loss_fn = torch_model(net)
    opt = torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=0.01)
    solver = SGDSolver(net, base_lr=0.2, momentum=0.9, weight_decay=0.01)
    ours, theirs = [], []
    for b in batches:
        ours.append(solver.step(**b))
        opt.zero_grad()
        loss = loss_fn(b)
        loss.backward()
        opt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert ours[-1] < ours[0]
    for p, q in zip(net.learnable_params, params):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-11, atol=1e-13)


def test_adam_follows_torch_adam_loss_curve():
    # with a negligible delta Caffe's and PyTorch's Adam are the same update
    batches = make_batches(6, n=3, seed=12)
    net = make_net()
    net.forward(**batches[0])
    torch, params, loss_fn = torch_model(net)
    opt = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.99), eps=1e-30)
    solver = AdamSolver(net, base_lr=0.01, momentum=0.9, momentum2=0.99, delta=1e-30)
    ours, theirs = [], []
    for b in batches:
        ours.append(solver.step(**b))
        opt.zero_grad()
        loss = loss_fn(b)
        loss.backward()
        opt.step()
        theirs.append(loss.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    for p, q in zip(net.learnable_params, params):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_training_is_bit_identical_at_one_and_two_threads():
    import convnet
    before = convnet.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            convnet.set_num_threads(threads)
            net = make_net(dtype=np.float32)
            solver = SGDSolver(net, base_lr=0.1, data=ListData(make_batches(3, n=4)))
            losses = [solver.step() for _ in range(3)]
            runs.append((losses, [p.data.copy() for p in net.learnable_params]))
    finally:
        convnet.set_num_threads(before)
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- fused update kernels

def _numpy_sgd(data, diff, history, rate, momentum, decay):
    """The NumPy passes the fused kernel replaced, in their order."""
    history *= momentum
    diff = diff * rate
    history += diff
    if decay != 0.0:
        history += data * np.asarray(rate * decay, data.dtype)
    data -= history


def _numpy_adam(data, diff, m, v, rate, b1, b2, delta, t, decay):
    g = diff + data * np.asarray(decay, data.dtype) if decay != 0.0 else diff.copy()
    m *= b1
    m += g * np.asarray(1.0 - b1, data.dtype)
    v *= b2
    v += np.square(g) * np.asarray(1.0 - b2, data.dtype)
    q = m / (np.sqrt(v) + np.asarray(delta, data.dtype))
    correction = np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    data -= q * np.asarray(rate * correction, data.dtype)


# sizes around the kernels' 65536-element chunks, a 4-D param and an empty one
SIZES = [(0,), (7,), (65536,), (3 * 65536 + 5,), (6, 5, 3, 3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("decay", [0.0, 5e-4])
def test_fused_updates_equal_the_numpy_passes_bit_for_bit(dtype, shape, decay):
    import convnet
    from convnet.backend import cpu
    rng = np.random.default_rng(7)
    data, diff, h, m, v = (rng.standard_normal(shape).astype(dtype) for _ in range(5))
    v = np.abs(v)
    want = [a.copy() for a in (data, diff, h)]
    _numpy_sgd(*want, 0.03, 0.9, decay)
    results = []
    before = convnet.get_num_threads()
    for threads in (1, 2):
        convnet.set_num_threads(threads)
        try:
            got = [a.copy() for a in (data, diff, h)]
            cpu.sgd_update(*got, 0.03, 0.9, decay)
            results.append(got)
        finally:
            convnet.set_num_threads(before)
    for got in results:
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[2], want[2])
    want = [a.copy() for a in (data, diff, m, v)]
    _numpy_adam(*want, 0.01, 0.85, 0.99, 1e-6, 3, decay)
    got = [a.copy() for a in (data, diff, m, v)]
    cpu.adam_update(*got, 0.01, 0.85, 0.99, 1e-6, 3, decay)
    for g, w in zip(got[:1] + got[2:], want[:1] + want[2:]):
        np.testing.assert_array_equal(g, w)


def test_updates_of_non_contiguous_params_take_the_numpy_passes():
    from convnet.backend import cpu
    rng = np.random.default_rng(8)
    base = rng.standard_normal((4, 6))
    data, diff, h = base[:, ::2].copy(order="F"), base[:, 1::2] * 1.0, np.zeros((4, 3))
    want = [data.copy(), diff.copy(), h.copy()]
    _numpy_sgd(*want, 0.1, 0.5, 0.01)
    cpu.sgd_update(data, diff, h, 0.1, 0.5, 0.01)
    np.testing.assert_allclose(data, want[0], rtol=1e-15)
    np.testing.assert_allclose(h, want[2], rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite_finds_any_nan_or_infinity_in_any_chunk(dtype):
    from convnet.backend import cpu
    clean = [np.zeros(s, dtype) for s in [(3,), (2 * 65536 + 3,), (0,), (5, 5)]]
    assert cpu.all_finite(clean)
    assert cpu.all_finite([])
    big = np.finfo(dtype).max
    clean[1][:] = big                       # large but finite
    assert cpu.all_finite(clean)
    for bad in (np.nan, np.inf, -np.inf):
        for where in (0, 65535, 65536, 2 * 65536 + 2):
            arrays = [a.copy() for a in clean]
            arrays[1][where] = bad
            assert not cpu.all_finite(arrays), (bad, where)
    assert not cpu.all_finite([np.array([1.0, np.nan])])
