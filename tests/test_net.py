"""convnet.Net: graph semantics (named blobs, in place, diff sums, need-backward), whole-net
gradients by finite differences, and weight files (save / load / partial load / corruption)."""

import os

import numpy as np
import pytest

from convnet import ConfigError, FileFormatError, Net, ShapeError, StateError
from convnet.layers import (BatchNorm, Convolution, Dropout, EuclideanLoss, Eltwise, Layer,
                            Pooling, ReLU, SoftmaxWithLoss, Unpooling)

F64 = np.float64


def seeded(layer, seed):
    layer.rng = np.random.default_rng(seed)
    return layer


def conv(num_output, kernel_size, seed, **kw):
    kw.setdefault("dtype", F64)
    kw.setdefault("bias_filler", dict(type="gaussian", std=0.1))
    return seeded(Convolution(num_output=num_output, kernel_size=kernel_size, **kw), seed)


def small_net(in_place=True, **net_kw):
    """data (N,2,5,6) -> conv1 3x3 -> ReLU -> conv2 1x1 (3 classes) -> SoftmaxWithLoss."""
    net = Net("small", **net_kw)
    net.add(conv(4, 3, 1, pad=1, name="conv1"), bottom=["data"], top=["conv1"])
    relu_top = "conv1" if in_place else "relu1"
    net.add(ReLU(dtype=F64, name="relu1"), bottom=["conv1"], top=[relu_top])
    net.add(conv(3, 1, 2, name="conv2"), bottom=[relu_top], top=["score"])
    net.add(SoftmaxWithLoss(dtype=F64, name="loss"), bottom=["score", "label"], top=["loss"])
    return net


def batch(rng, n=2, c=2, h=5, w=6, classes=3):
    return {"data": rng.standard_normal((n, c, h, w)),
            "label": rng.integers(0, classes, (n, h, w))}


class Counting(Layer):
    """y = 2 x; counts backward calls (to see what the need-backward analysis skips)."""

    def __init__(self, **kw):
        self.in_place = False
        self.backward_calls = 0
        super().__init__(**kw)

    def _reshape(self, shapes):
        return shapes[0]

    def _forward(self, bottoms):
        return [bottoms[0] * 2]

    def _backward(self, top_diffs, propagate_down):
        self.backward_calls += 1
        return [top_diffs[0] * 2]


# ---------------------------------------------------------------- building the graph

def test_add_names_unnamed_layers_by_type_and_count():
    net = Net()
    a = net.add(conv(2, 1, 0), bottom=["data"], top=["a"])
    b = net.add(ReLU(dtype=F64), bottom=["a"], top=["b"])
    c = net.add(conv(2, 1, 0), bottom=["b"], top=["c"])
    assert (a.name, b.name, c.name) == ("conv1", "relu1", "conv2")
    assert net.layer("conv2") is c
    assert net.layers == [a, b, c]


def test_add_defaults_bottom_to_previous_top_and_top_to_layer_name():
    net = Net()
    net.add(conv(2, 1, 0, name="c1"), bottom="data")
    net.add(ReLU(dtype=F64, name="r1"))
    assert net.inputs == ["data"] and net.outputs == ["r1"]


def test_duplicate_layer_name_is_an_error():
    net = Net()
    net.add(conv(2, 1, 0, name="conv1"), bottom=["data"], top=["a"])
    with pytest.raises(ConfigError, match="duplicate layer name 'conv1'"):
        net.add(conv(2, 1, 0, name="conv1"), bottom=["a"], top=["b"])


def test_same_layer_object_added_twice_is_an_error():
    net = Net()
    layer = net.add(conv(2, 1, 0), bottom=["data"], top=["a"])
    with pytest.raises(ConfigError, match="already added"):
        net.add(layer, bottom=["a"], top=["b"])


def test_writing_an_existing_blob_other_than_in_place_is_an_error():
    net = Net()
    net.add(conv(2, 1, 0, name="c1"), bottom=["data"], top=["a"])
    with pytest.raises(ConfigError, match="writes blob 'a', which is already the top of "
                                          "layer 'c1'"):
        net.add(conv(2, 1, 0, name="c2"), bottom=["data"], top=["a"])
    with pytest.raises(ConfigError, match="blob 'data', which is already a net input"):
        net.add(conv(2, 1, 0, name="c3"), bottom=["a"], top=["data"])


def test_bottom_count_is_checked_when_adding():
    net = Net()
    with pytest.raises(ShapeError, match="SoftmaxWithLoss 'loss': expects 2 bottoms, got 1"):
        net.add(SoftmaxWithLoss(name="loss"), bottom=["score"], top=["loss"])


def test_bad_blob_names_and_layers_are_rejected():
    net = Net()
    with pytest.raises(ConfigError, match="bottom of layer 'c1' must be a list of non-empty"):
        net.add(conv(2, 1, 0, name="c1"), bottom=[""], top=["a"])
    with pytest.raises(ConfigError, match="add\\(\\) takes a convnet Layer, got function"):
        net.add(lambda x: x, bottom=["data"])
    with pytest.raises(ConfigError, match="layer 'r' needs bottom"):
        net.add(ReLU(name="r"))
    with pytest.raises(ConfigError, match="lists a top twice"):
        net.add(Pooling(kernel_size=2, return_mask=True, name="p"), bottom=["x"],
                top=["y", "y"])


def test_undefined_bottom_is_a_missing_input_naming_the_blob_and_a_close_name():
    net = Net()
    net.add(conv(2, 1, 0, name="conv1"), bottom=["data"], top=["conv1"])
    net.add(ReLU(name="relu1"), bottom=["conv_1"], top=["relu1"])     # typo
    x = np.zeros((1, 2, 3, 3))
    with pytest.raises(ConfigError, match="missing input blob 'conv_1' \\(read by layer "
                                          "'relu1'.*did you mean 'conv1'\\?"):
        net.forward(data=x)


def test_missing_and_unknown_inputs_are_errors_naming_the_blob(rng):
    net = small_net()
    b = batch(rng)
    with pytest.raises(ConfigError, match="missing input blob 'label' \\(read by layer "
                                          "'loss'"):
        net.forward(data=b["data"])
    with pytest.raises(ConfigError, match="unknown input blob 'labels' \\(did you mean "
                                          "'label'\\?\\); the net's inputs are: data, label"):
        net.forward(labels=b["label"], **b)


def test_forward_returns_unconsumed_tops_and_losses_and_sets_blobs(rng):
    net = Net()
    net.add(conv(3, 1, 0, name="c1"), bottom=["data"], top=["c1"])
    net.add(conv(3, 1, 1, name="c2"), bottom=["c1"], top=["c2"])
    net.add(EuclideanLoss(dtype=F64, loss_weight=0.5, name="l2"), bottom=["c2", "target"],
            top=["l2"])
    x, t = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 3, 3, 4))
    out = net.forward(data=x, target=t)
    assert set(out) == {"l2"}
    expected = 0.5 * np.sum((net.blobs["c2"] - t) ** 2) / (2 * 2)
    assert out["l2"] == pytest.approx(expected, rel=1e-12)
    assert net.loss == pytest.approx(expected, rel=1e-12)
    assert set(net.blobs) == {"data", "target", "c1", "c2", "l2"}
    # a top nobody reads is an output too
    net2 = Net()
    net2.add(conv(3, 1, 0, name="c1"), bottom=["data"], top=["c1"])
    out2 = net2.forward(data=x)
    assert set(out2) == {"c1"} and net2.loss == 0.0


def test_loss_top_cannot_be_a_bottom():
    net = small_net()
    with pytest.raises(ConfigError, match="reads a loss top"):
        net.add(ReLU(name="r"), bottom=["loss"], top=["r"])


def test_top_count_mismatch_is_an_error_at_forward(rng):
    net = Net()
    net.add(Pooling(kernel_size=2, stride=2, dtype=F64, name="pool"), bottom=["data"],
            top=["p", "mask"])
    with pytest.raises(ShapeError, match="Pooling 'pool' produces 1 top\\(s\\) but was added "
                                         "with 2 top name\\(s\\)"):
        net.forward(data=rng.standard_normal((1, 1, 4, 4)))


def test_backward_before_forward_is_an_error():
    with pytest.raises(StateError, match="backward\\(\\) called before forward"):
        small_net().backward()


def test_train_and_eval_set_every_layers_phase():
    net = small_net()
    assert net.eval() is net and all(lyr.phase == "TEST" for lyr in net.layers)
    assert all(lyr.phase == "TRAIN" for lyr in net.train().layers)


# ---------------------------------------------------------------- in place

def test_in_place_relu_gives_the_same_outputs_and_gradients_as_a_separate_top(rng):
    b = batch(rng)
    results = []
    for in_place in (True, False):
        net = small_net(in_place=in_place)
        net.forward(**b)
        net.backward()
        results.append((net.loss, [p.diff.copy() for p in net.learnable_params],
                        net.diffs["score"].copy()))
        assert net.layer("relu1").in_place is in_place
    (l1, g1, s1), (l2, g2, s2) = results
    assert l1 == l2
    for a, c in zip(g1, g2):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(s1, s2)


def test_in_place_blob_shows_data_of_last_write_and_diff_of_first(rng):
    net = small_net(in_place=True, force_backward=True)
    b = batch(rng)
    net.forward(**b)
    net.backward()
    assert np.all(net.blobs["conv1"] >= 0)      # the ReLU output replaced the conv output
    ref = small_net(in_place=False, force_backward=True)
    ref.forward(**b)
    ref.backward()
    # Caffe's shared buffer: after backward it holds the ReLU's bottom diff
    np.testing.assert_array_equal(net.diffs["conv1"], ref.diffs["conv1"])


def test_layer_without_in_place_support_cannot_run_in_place():
    net = Net()
    with pytest.raises(ConfigError, match="Convolution 'c1' cannot run in place"):
        net.add(conv(2, 1, 0, name="c1"), bottom=["data"], top=["data"])


def test_in_place_on_a_blob_another_layer_reads_is_an_error():
    net = Net()
    net.add(conv(2, 1, 0, name="c1"), bottom=["data"], top=["a"])
    net.add(conv(2, 1, 0, name="c2"), bottom=["a"], top=["b"])
    with pytest.raises(ConfigError, match="ReLU 'r' cannot run in place on blob 'a': "
                                          "layer\\(s\\) \\['c2'\\] also read it"):
        net.add(ReLU(name="r"), bottom=["a"], top=["a"])


def test_in_place_on_an_input_leaves_the_callers_array_alone(rng):
    net = Net()
    net.add(ReLU(dtype=F64, name="r"), bottom=["data"], top=["data"])
    x = rng.standard_normal((2, 3))
    before = x.copy()
    out = net.forward(data=x)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(out["data"], np.maximum(before, 0))


# ---------------------------------------------------------------- backward semantics

def test_blob_read_by_two_layers_receives_the_sum_of_their_diffs(rng):
    net = Net(force_backward=True)
    c1 = net.add(conv(3, 3, 0, pad=1, name="c1"), bottom=["data"], top=["c1"])
    a = net.add(conv(2, 1, 1, name="a"), bottom=["c1"], top=["a"])
    b = net.add(conv(2, 3, 2, pad=1, name="b"), bottom=["c1"], top=["b"])
    net.add(EuclideanLoss(dtype=F64, name="la"), bottom=["a", "ta"], top=["la"])
    net.add(EuclideanLoss(dtype=F64, loss_weight=0.3, name="lb"), bottom=["b", "tb"],
            top=["lb"])
    x = rng.standard_normal((2, 2, 4, 5))
    ta, tb = rng.standard_normal((2, 2, 4, 5)), rng.standard_normal((2, 2, 4, 5))
    net.forward(data=x, ta=ta, tb=tb)
    net.backward()
    # by hand: each branch's bottom diff from the layers themselves
    h = c1.forward(x)
    ya, yb = a.forward(h), b.forward(h)
    da = a.backward((ya - ta) / 2)
    db = b.backward(0.3 * (yb - tb) / 2)
    np.testing.assert_allclose(net.diffs["c1"], da + db, rtol=1e-12, atol=1e-14)
    assert np.abs(da).max() > 0 and np.abs(db).max() > 0


def test_one_array_returned_for_two_bottoms_is_not_written_through(rng):
    # Eltwise SUM of a blob with itself: both bottom diffs are the same blob's
    net = Net(force_backward=True)
    net.add(conv(2, 1, 0, name="c1"), bottom=["data"], top=["c1"])
    net.add(Eltwise("SUM", coeff=[1.0, 2.0], dtype=F64, name="sum"), bottom=["c1", "c1"],
            top=["s"])
    net.add(EuclideanLoss(dtype=F64, name="l"), bottom=["s", "t"], top=["l"])
    x, t = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 2, 3, 3))
    net.forward(data=x, t=t)
    net.backward()
    np.testing.assert_allclose(net.diffs["c1"], 3 * (net.blobs["s"] - t) / 2, rtol=1e-12)


def test_eltwise_sum_handing_back_dy_to_in_place_branches_keeps_them_apart(rng):
    # Eltwise SUM returns its top diff itself for both bottoms; each branch ends in an
    # in-place ReLU whose backward writes through its top diff
    net = Net(force_backward=True)
    net.add(conv(2, 1, 0, name="a"), bottom=["data"], top=["a"])
    net.add(ReLU(dtype=F64, name="ra"), bottom=["a"], top=["a"])
    net.add(conv(2, 3, 1, name="b", pad=1), bottom=["data"], top=["b"])
    net.add(ReLU(dtype=F64, name="rb"), bottom=["b"], top=["b"])
    net.add(Eltwise("SUM", dtype=F64, name="sum"), bottom=["a", "b"], top=["s"])
    net.add(EuclideanLoss(dtype=F64, name="l"), bottom=["s", "t"], top=["l"])
    x, t = rng.standard_normal((2, 2, 4, 4)), rng.standard_normal((2, 2, 4, 4))
    net.forward(data=x, t=t)
    net.backward()
    ds = (net.blobs["s"] - t) / 2
    np.testing.assert_allclose(net.diffs["s"], ds, rtol=1e-12)
    np.testing.assert_allclose(net.diffs["a"], ds * (net.blobs["a"] > 0), rtol=1e-12)
    np.testing.assert_allclose(net.diffs["b"], ds * (net.blobs["b"] > 0), rtol=1e-12)
    assert len({id(net.diffs[k]) for k in ("s", "a", "b")}) == 3


def test_need_backward_skips_inputs_and_layers_without_learnable_params_upstream(rng):
    net = Net()
    front = net.add(Counting(dtype=F64, name="front"), bottom=["data"], top=["f"])
    fixed = net.add(conv(2, 1, 0, name="fixed", param=[dict(lr_mult=0), dict(lr_mult=0)]),
                    bottom=["f"], top=["g"])
    net.add(conv(2, 1, 1, name="learn"), bottom=["g"], top=["h"])
    tail = net.add(Counting(dtype=F64, name="tail"), bottom=["h"], top=["k"])
    net.add(EuclideanLoss(dtype=F64, name="l"), bottom=["k", "t"], top=["l"])
    x, t = rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((1, 2, 3, 3))
    net.forward(data=x, t=t)
    net.backward()
    assert front.backward_calls == 0 and tail.backward_calls == 1
    assert set(net.diffs) == {"h", "k"}        # no diff for data, f, g, nor the target t
    assert not np.any(fixed.params[0].diff)
    # force_backward (Caffe's) propagates to the inputs
    net.force_backward = True
    net.forward(data=x, t=t)
    net.backward()
    assert front.backward_calls == 1 and {"data", "t", "f", "g"} <= set(net.diffs)


def test_zero_loss_weight_and_non_loss_outputs_get_no_backward(rng):
    net = Net()
    net.add(conv(2, 1, 0, name="c1"), bottom=["data"], top=["c1"])
    side = net.add(Counting(dtype=F64, name="side"), bottom=["c1"], top=["side"])
    net.add(EuclideanLoss(dtype=F64, loss_weight=0.0, name="l"), bottom=["c1", "t"],
            top=["l"])
    x, t = rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((1, 2, 3, 3))
    net.forward(data=x, t=t)
    net.backward()
    assert side.backward_calls == 0 and net.diffs == {}
    assert not np.any(net.layer("c1").params[0].diff)


def test_param_diffs_accumulate_over_two_backwards_until_zero_diffs(rng):
    net = small_net()
    net.forward(**batch(rng))
    net.backward()
    once = [p.diff.copy() for p in net.learnable_params]
    net.backward()
    for p, g in zip(net.learnable_params, once):
        np.testing.assert_allclose(p.diff, 2 * g, rtol=1e-12)
    net.zero_diffs()
    assert not any(np.any(p.diff) for p in net.learnable_params)


def test_pooling_mask_top_feeds_unpooling_and_gets_no_diff(rng):
    net = Net(force_backward=True)
    net.add(Pooling(kernel_size=2, stride=2, return_mask=True, dtype=F64, name="pool"),
            bottom=["data"], top=["p", "mask"])
    net.add(Unpooling(kernel_size=2, stride=2, dtype=F64, name="unpool"),
            bottom=["p", "mask"], top=["u"])
    net.add(EuclideanLoss(dtype=F64, name="l"), bottom=["u", "t"], top=["l"])
    x, t = rng.standard_normal((1, 2, 4, 6)), rng.standard_normal((1, 2, 4, 6))
    net.forward(data=x, t=t)
    net.backward()
    assert "p" in net.diffs and "data" in net.diffs
    # d/dx of |unpool(pool(x)) - t|^2/2: (x - t) at the kept maxima, 0 elsewhere
    kept = net.blobs["u"] != 0
    np.testing.assert_allclose(net.diffs["data"], np.where(kept, x - t, 0), rtol=1e-12)


def test_debug_mode_names_the_first_layer_with_a_non_finite_output(rng):
    net = small_net(debug=True)
    b = batch(rng)
    net.forward(**b)
    assert net.first_nonfinite is None
    net.layer("conv2").params[0].data[0, 0, 0, 0] = np.inf
    net.forward(**b)
    assert net.first_nonfinite == "Convolution 'conv2' (top 'score')"


# ---------------------------------------------------------------- whole-net gradients

def branchy_net():
    """conv -> BatchNorm -> ReLU (in place) -> two convs summed (Eltwise) -> softmax loss,
    plus a weighted Euclidean loss on one branch: every kind of edge in one graph."""
    net = Net("branchy", force_backward=True)
    net.add(conv(3, 3, 10, pad=1, stride=(1, 2), name="c1"), bottom=["data"], top=["c1"])
    net.add(BatchNorm(dtype=F64, name="bn1"), bottom=["c1"], top=["bn1"])
    net.add(ReLU(dtype=F64, name="r1"), bottom=["bn1"], top=["bn1"])
    net.add(conv(3, 1, 11, name="a"), bottom=["bn1"], top=["a"])
    net.add(conv(3, 3, 12, pad=1, name="b"), bottom=["bn1"], top=["b"])
    net.add(Eltwise("SUM", dtype=F64, name="sum"), bottom=["a", "b"], top=["score"])
    net.add(SoftmaxWithLoss(dtype=F64, name="ce"), bottom=["score", "label"], top=["ce"])
    net.add(EuclideanLoss(dtype=F64, loss_weight=0.25, name="l2"), bottom=["a", "t"],
            top=["l2"])
    return net


def test_whole_net_gradients_match_finite_differences(rng):
    net = branchy_net()
    inputs = {"data": rng.standard_normal((2, 2, 5, 7)),
              "label": rng.integers(0, 3, (2, 5, 4)),
              "t": rng.standard_normal((2, 3, 5, 4))}
    net.forward(**inputs)
    net.zero_diffs()
    net.backward()
    grads = {key: p.diff.copy() for key, p in net.named_params()}
    grads["data"] = net.diffs["data"].copy()

    def loss_with(target, value):
        saved = target.copy()
        target[...] = value
        net.forward(**inputs)
        target[...] = saved
        return net.loss

    eps = 1e-6
    targets = [(key, p.data) for key, p in net.named_params()] + [("data", inputs["data"])]
    for key, array in targets:
        for d in range(3):
            v = rng.standard_normal(array.shape)
            numeric = (loss_with(array, array + eps * v) - loss_with(array, array - eps * v)) \
                / (2 * eps)
            analytic = float(np.vdot(grads[key], v))
            assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8), (key, d)


# ---------------------------------------------------------------- weight files

def trained_pair(rng):
    """Two nets of the same architecture with different weights (and BatchNorm buffers)."""
    nets = []
    for seed in (0, 1):
        net = Net("pair")
        net.add(conv(3, 3, seed, pad=1, name="c1"), bottom=["data"], top=["c1"])
        net.add(BatchNorm(dtype=F64, name="bn"), bottom=["c1"], top=["bn"])
        net.add(conv(2, 1, seed + 5, name="c2"), bottom=["bn"], top=["c2"])
        net.forward(data=rng.standard_normal((2, 2, 4, 4)))
        nets.append(net)
    return nets


def test_save_load_roundtrip_restores_params_and_buffers(tmp_path, rng):
    src, dst = trained_pair(rng)
    path = tmp_path / "w.npz"
    src.save(path)
    report = dst.load(path)
    assert report.skipped == [] and report.missing == []
    assert set(report.matched) == {*[k for k, _ in src.named_params()],
                                   *[k for k, _ in src.named_buffers()]}
    assert {"c1/weight", "c1/bias", "bn/buffer:mean", "bn/buffer:var"} <= set(report.matched)
    for (ka, pa), (kb, pb) in zip(src.named_params(), dst.named_params()):
        assert ka == kb
        np.testing.assert_array_equal(pa.data, pb.data)
    for (ka, a), (kb, b) in zip(src.named_buffers(), dst.named_buffers()):
        np.testing.assert_array_equal(a, b)
    with np.load(path, allow_pickle=False) as f:
        assert "c1/weight" in f.files and "bn/buffer:mean" in f.files
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]


def test_load_into_a_fresh_net_sets_it_up_from_the_saved_input_shapes(tmp_path, rng):
    src, _ = trained_pair(rng)
    src.save(tmp_path / "w.npz")
    fresh = Net("pair")
    fresh.add(conv(3, 3, 9, pad=1, name="c1"), bottom=["data"], top=["c1"])
    fresh.add(BatchNorm(dtype=F64, name="bn"), bottom=["c1"], top=["bn"])
    fresh.add(conv(2, 1, 9, name="c2"), bottom=["bn"], top=["c2"])
    fresh.load(tmp_path / "w.npz")
    np.testing.assert_array_equal(fresh.layer("c2").params[0].data,
                                  src.layer("c2").params[0].data)


def test_save_before_setup_is_an_error(tmp_path):
    with pytest.raises(StateError, match="have not been set up yet"):
        small_net().save(tmp_path / "w.npz")


def test_strict_load_names_missing_and_unexpected_params(tmp_path, rng):
    src, _ = trained_pair(rng)
    src.save(tmp_path / "w.npz")
    renamed = Net("pair")
    renamed.add(conv(3, 3, 0, pad=1, name="c1"), bottom=["data"], top=["c1"])
    renamed.add(BatchNorm(dtype=F64, name="bn"), bottom=["c1"], top=["bn"])
    renamed.add(conv(2, 1, 0, name="c2_new"), bottom=["bn"], top=["c2"])
    renamed.forward(data=rng.standard_normal((2, 2, 4, 4)))
    before = renamed.layer("c1").params[0].data.copy()
    with pytest.raises(FileFormatError, match="missing from the file: c2_new/weight, "
                                              "c2_new/bias; in the file but not in the net: "
                                              "c2/weight, c2/bias"):
        renamed.load(tmp_path / "w.npz")
    np.testing.assert_array_equal(renamed.layer("c1").params[0].data, before)


def test_partial_load_reports_matched_skipped_and_missing(tmp_path, rng):
    src, _ = trained_pair(rng)
    src.save(tmp_path / "w.npz")
    net = Net("finetune")
    net.add(conv(3, 3, 0, pad=1, name="c1"), bottom=["data"], top=["c1"])
    net.add(conv(5, 1, 0, name="head"), bottom=["c1"], top=["head"])
    net.forward(data=rng.standard_normal((1, 2, 4, 4)))
    head = net.layer("head").params[0].data.copy()
    report = net.load(tmp_path / "w.npz", strict=False)
    assert report.matched == ["c1/weight", "c1/bias"]
    in_file = [k for k, _ in src.named_params()] + [k for k, _ in src.named_buffers()]
    assert sorted(report.skipped) == sorted(k for k in in_file if not k.startswith("c1/"))
    assert report.missing == ["head/weight", "head/bias"]
    assert "missing (in net, not in file, left as initialised): head/weight" in repr(report)
    np.testing.assert_array_equal(net.layer("c1").params[0].data,
                                  src.layer("c1").params[0].data)
    np.testing.assert_array_equal(net.layer("head").params[0].data, head)


def test_shape_mismatch_on_load_names_the_param(tmp_path, rng):
    src, _ = trained_pair(rng)
    src.save(tmp_path / "w.npz")
    net = Net("pair")
    net.add(conv(3, 3, 0, pad=1, name="c1"), bottom=["data"], top=["c1"])
    net.add(BatchNorm(dtype=F64, name="bn"), bottom=["c1"], top=["bn"])
    net.add(conv(4, 1, 0, name="c2"), bottom=["bn"], top=["c2"])
    net.forward(data=rng.standard_normal((1, 2, 4, 4)))
    c1 = net.layer("c1").params[0].data.copy()
    with pytest.raises(FileFormatError, match="'c2/weight' has shape 2x3x1x1 in the file but "
                                         "4x3x1x1 in net 'pair'"):
        net.load(tmp_path / "w.npz", strict=False)
    np.testing.assert_array_equal(net.layer("c1").params[0].data, c1)   # nothing loaded


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "missing", "foreign",
                                    "pickled"])
def test_damaged_weight_files_raise_file_format_error_naming_the_file(tmp_path, rng, damage):
    src, dst = trained_pair(rng)
    good = tmp_path / "good.npz"
    src.save(good)
    bad = tmp_path / f"{damage}.npz"
    raw = good.read_bytes()
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        bad.write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    elif damage == "foreign":
        np.savez(bad, weights=np.zeros(3))
    elif damage == "pickled":
        np.savez(bad, **{"c1/weight": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(FileFormatError, match=str(bad).replace(".", "\\.")):
        dst.load(bad)


def test_weights_written_over_an_old_file_replace_it_completely(tmp_path, rng):
    src, dst = trained_pair(rng)
    path = tmp_path / "w.npz"
    dst.save(path)
    src.save(path)
    dst.load(path)
    np.testing.assert_array_equal(dst.layer("c1").params[0].data,
                                  src.layer("c1").params[0].data)
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]


def test_rng_state_roundtrip_reproduces_dropout_masks(rng):
    net = Net()
    net.add(Dropout(dtype=F64, seed=3, name="drop"), bottom=["data"], top=["d"])
    x = np.ones((4, 5))
    net.forward(data=x)
    state = net.get_rng_state()
    first = net.forward(data=x)["d"].copy()
    net.set_rng_state(state)
    np.testing.assert_array_equal(net.forward(data=x)["d"], first)
    with pytest.raises(ConfigError, match="random state for unknown layer 'drp'"):
        net.set_rng_state({"drp": state["drop"]})


def test_unknown_layer_name_and_bad_net_name_are_errors():
    net = small_net()
    with pytest.raises(ConfigError, match="Net 'small': no layer named 'conv3' \\(did you "
                                          "mean 'conv2'\\?\\)"):
        net.layer("conv3")
    with pytest.raises(ConfigError, match="Net: name must be a non-empty string"):
        Net("")
    with pytest.raises(StateError, match="the net has no layers"):
        Net().forward()


def test_keep_diffs_false_frees_intermediate_diffs_and_gives_the_same_gradients():
    from convnet import seed
    from convnet.layers import Convolution, Eltwise, ReLU, SoftmaxWithLoss
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 5))
    label = rng.integers(0, 3, (2, 6, 5))
    results = []
    for keep in (True, False):
        seed(1)
        net = Net(force_backward=True, keep_diffs=keep)
        net.add(Convolution(num_output=4, kernel_size=3, pad=1, name="c1", dtype=np.float64),
                bottom=["data"], top=["c1"])
        net.add(ReLU(name="r1", dtype=np.float64), bottom=["c1"], top=["c1"])
        # a blob read twice: its diff is the sum of two layers' diffs
        net.add(Convolution(num_output=3, kernel_size=1, name="a", dtype=np.float64),
                bottom=["c1"], top=["a"])
        net.add(Convolution(num_output=3, kernel_size=3, pad=1, name="b", dtype=np.float64),
                bottom=["c1"], top=["b"])
        net.add(Eltwise(name="sum", dtype=np.float64), bottom=["a", "b"], top=["score"])
        net.add(SoftmaxWithLoss(name="loss", dtype=np.float64), bottom=["score", "label"],
                top=["loss"])
        net.zero_diffs()
        net.forward(data=x, label=label)
        net.backward()
        results.append(([p.diff.copy() for p in net.learnable_params], dict(net.diffs)))
    (kept_params, kept), (freed_params, freed) = results
    for a, b in zip(kept_params, freed_params):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(kept["data"], freed["data"])
    assert {"c1", "a", "b", "score"} <= set(kept)
    assert set(freed) == {"data"}


# ------------------------------------------------------------------ net-wide dtype

def test_net_dtype_goes_to_every_layer_added_without_one():
    from convnet.layers import Pooling, ReLU
    net = Net(dtype=np.float64)
    net.add(Convolution(4, 3, pad=1, name="c"), bottom=["data"], top=["c"])
    net.add(ReLU(name="r"), bottom=["c"], top=["c"])
    net.add(Pooling(kernel_size=2, stride=2, name="p"), bottom=["c"], top=["p"])
    net.add(Convolution(2, 1, name="keep32", dtype=np.float32), bottom=["p"], top=["q"])
    assert [lyr.dtype for lyr in net.layers[:3]] == [np.float64] * 3
    assert net.layers[3].dtype == np.float32                   # an explicit dtype stays
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6))
    with pytest.warns(UserWarning, match=r"Convolution 'keep32' is float32 but its bottom "
                                         r"'p' is float64"):
        net.forward(data=x)
    assert net.blobs["p"].dtype == np.float64 and net.layers[0].weight.data.dtype == np.float64
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.forward(data=x)                                    # warned once per layer


def test_a_float32_net_keeps_float32_and_bad_net_dtypes_are_errors():
    net = Net()
    net.add(Convolution(2, 1, name="c"), bottom=["data"], top=["c"])
    assert net.layers[0].dtype == np.float32
    with pytest.raises(ConfigError, match="dtype must be float32 or float64, got int32"):
        Net(dtype=np.int32)


def test_a_channels_last_bottom_gets_an_nhwc_hint():
    net = Net()
    net.add(Convolution(4, 3, name="c1"), bottom=["data"], top=["c"])
    net.forward(data=np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ShapeError, match=r"1x8x8x3 looks channels-last, NHWC: convnet takes "
                                         r"NCHW arrays, x.transpose\(0, 3, 1, 2\)"):
        net.forward(data=np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ShapeError) as err:
        net.forward(data=np.zeros((1, 5, 8, 8), np.float32))
    assert "NHWC" not in str(err.value)


def test_float64_net_inputs_are_converted_without_a_warning():
    import warnings
    net = Net()
    net.add(Convolution(2, 1, name="c"), bottom=["data"], top=["c"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.forward(data=np.ones((1, 3, 4, 4)))
    assert net.blobs["c"].dtype == np.float32
