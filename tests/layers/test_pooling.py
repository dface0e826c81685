"""Pooling (MAX / AVE, masks) and Unpooling against naive references, PyTorch and finite
differences; thread determinism; every rejected input."""

import numpy as np
import pytest

import convnet
from convnet import shapes
from convnet.errors import ConfigError, DataError, ShapeError, StateError
from convnet.layers import Pooling, Unpooling
from convnet.layers.pooling import min_unpool_size
from convnet.testing import check_gradients
from conftest import at_threads, assert_close
from reference import pooling as ref

NUM_CONFIGS = 36


def random_config(rng, torch_pad=False):
    """A random pooling geometry with a non-empty output: odd, non-square sizes, per-axis
    kernel / stride / pad, ceil or floor. torch_pad keeps pad <= kernel // 2 (PyTorch's limit)."""
    while True:
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        p = tuple(int(rng.integers(0, (kk // 2 if torch_pad else kk - 1) + 1)) for kk in k)
        hw = (int(rng.integers(1, 10)), int(rng.integers(1, 10)))
        ceil = bool(rng.integers(0, 2))
        out = [shapes.pool_out(hw[i], k[i], s[i], p[i], ceil) for i in range(2)]
        if min(out) > 0:
            n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
            return dict(shape=(n, c) + hw, k=k, s=s, p=p, ceil=ceil)


def tie_free(rng, shape, spacing=1.0):
    """Distinct values spaced by ``spacing``, in random order (unique maxima, and finite
    differences never cross a tie)."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * spacing
            - np.prod(shape) * spacing / 2)


def make_pool(cfg, pool="MAX", dtype=np.float64, return_mask=False):
    return Pooling(kernel_size=cfg["k"], stride=cfg["s"], pad=cfg["p"], pool=pool,
                   round_mode="CEIL" if cfg["ceil"] else "FLOOR", return_mask=return_mask,
                   dtype=dtype, name="pool")


@pytest.fixture
def restore_threads():
    before = convnet.get_num_threads()
    yield
    convnet.set_num_threads(before)


# ------------------------------------------------------------------ output sizes

@pytest.mark.parametrize("size, k, s, p, ceil, expected", [
    (7, 3, 2, 0, True, 3),
    (8, 3, 2, 0, True, 4),      # ceil keeps the partial last window
    (8, 3, 2, 0, False, 3),     # floor drops it
    (4, 1, 2, 0, True, 2),      # Caffe: 3 (a window wholly past the image); dropped here
    (6, 2, 3, 0, True, 2),      # Caffe: 3, same rule
    (3, 2, 2, 1, True, 2),      # the last window would start in the right padding
    (5, 3, 2, 1, True, 3),
    (128, 3, 2, 1, True, 65),
    (1, 1, 1, 0, True, 1),
])
def test_output_size_follows_ceil_rule_without_padding_only_windows(size, k, s, p, ceil,
                                                                    expected):
    layer = Pooling(kernel_size=k, stride=s, pad=p, round_mode="CEIL" if ceil else "FLOOR")
    assert layer.setup((1, 1, size, 5)) == (1, 1, expected, shapes.pool_out(5, k, s, p, ceil))


def test_no_window_lies_wholly_in_padding(rng):
    for _ in range(200):
        cfg = random_config(rng)
        for axis in range(2):
            size = cfg["shape"][2 + axis]
            k, s, p = cfg["k"][axis], cfg["s"][axis], cfg["p"][axis]
            out = shapes.pool_out(size, k, s, p, cfg["ceil"])
            last_start = (out - 1) * s - p
            assert last_start < size and last_start + k > 0


# ------------------------------------------------------------------ forward / backward vs reference

def test_max_forward_and_mask_match_reference(dtype, rng):
    for _ in range(NUM_CONFIGS):
        cfg = random_config(rng)
        x = tie_free(rng, cfg["shape"])
        layer = make_pool(cfg, dtype=dtype, return_mask=True)
        y, mask = layer.forward(x)
        y_ref, idx_ref = ref.max_pool(x, cfg["k"], cfg["s"], cfg["p"], cfg["ceil"])
        assert y.dtype == dtype and mask.dtype == dtype
        assert_close(y, y_ref, dtype, scale=x.size)
        np.testing.assert_array_equal(mask, idx_ref)


def test_max_backward_matches_reference(dtype, rng):
    for _ in range(NUM_CONFIGS):
        cfg = random_config(rng)
        x = tie_free(rng, cfg["shape"])
        layer = make_pool(cfg, dtype=dtype)
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape)
        _, idx_ref = ref.max_pool(x, cfg["k"], cfg["s"], cfg["p"], cfg["ceil"])
        assert_close(layer.backward(dy), ref.max_pool_backward(dy, idx_ref, x.shape), dtype)


def test_ave_forward_and_backward_match_reference(dtype, rng):
    for _ in range(NUM_CONFIGS):
        cfg = random_config(rng)
        x = rng.standard_normal(cfg["shape"])
        layer = make_pool(cfg, pool="AVE", dtype=dtype)
        y = layer.forward(x)
        assert_close(y, ref.ave_pool(x, cfg["k"], cfg["s"], cfg["p"], cfg["ceil"]), dtype)
        dy = rng.standard_normal(y.shape)
        assert_close(layer.backward(dy),
                     ref.ave_pool_backward(dy, x.shape, cfg["k"], cfg["s"], cfg["p"]), dtype)


def test_ave_divisor_counts_padding_but_not_the_ceil_overhang():
    # 6 ones, kernel 3 stride 2 pad 1, ceil: windows [-1, 2), [1, 4), [3, 6), [5, 8); the last
    # is cut to the padded extent [-1, 7), so it averages 1 pixel over 2 (not 3, not 1)
    y = Pooling(kernel_size=3, stride=2, pad=1, pool="AVE").forward(np.ones((1, 1, 6, 6)))
    per_axis = np.array([2 / 3, 1, 1, 1 / 2])
    np.testing.assert_allclose(y[0, 0], np.outer(per_axis, per_axis), rtol=1e-6)


def test_max_ties_pick_first_maximum_in_scan_order():
    x = np.zeros((1, 1, 5, 6))
    y, mask = Pooling(kernel_size=(3, 2), stride=(2, 3), pad=(1, 1),
                      return_mask=True).forward(x)
    _, idx_ref = ref.max_pool(x, (3, 2), (2, 3), (1, 1))
    np.testing.assert_array_equal(mask, idx_ref)
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 1, 1] == 1 * 6 + 2


def test_max_propagates_nan_like_torch():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = np.nan
    y, mask = Pooling(kernel_size=2, stride=2, return_mask=True, dtype=np.float64).forward(x)
    assert np.isnan(y[0, 0, 0, 0]) and mask[0, 0, 0, 0] == 0
    assert y[0, 0, 1, 1] == 15


def test_global_pooling_reduces_whole_planes(rng, dtype):
    x = rng.standard_normal((2, 3, 5, 7))
    ymax = Pooling(global_pooling=True, dtype=dtype).forward(x)
    yave = Pooling(global_pooling=True, pool="AVE", dtype=dtype).forward(x)
    assert ymax.shape == yave.shape == (2, 3, 1, 1)
    assert_close(ymax, x.max(axis=(2, 3), keepdims=True), dtype)
    assert_close(yave, x.mean(axis=(2, 3), keepdims=True), dtype)


def test_fast_k2s2_path_matches_reference_on_odd_and_even_sizes(dtype, rng):
    for h, w in [(4, 6), (5, 7), (2, 9), (9, 3)]:
        for ceil in (True, False):
            x = tie_free(rng, (2, 3, h, w))
            y, mask = Pooling(kernel_size=2, stride=2, return_mask=True, dtype=dtype,
                              round_mode="CEIL" if ceil else "FLOOR").forward(x)
            y_ref, idx_ref = ref.max_pool(x, (2, 2), (2, 2), (0, 0), ceil)
            assert_close(y, y_ref, dtype, scale=x.size)
            np.testing.assert_array_equal(mask, idx_ref)


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (1, 2, 0), (3, 2, 1), (2, 1, 0), (1, 1, 0),
                                     (3, 3, 0), (2, 3, 0)])
def test_max_backward_block_path_and_its_fallback_match_reference(k, s, p, dtype, rng):
    # backward writes 2x2 blocks directly where every argmax of the tiled part lies in
    # its block (k2 s2, k1 s2, ...) and scatters otherwise; odd sizes leave rows and
    # columns past the blocks
    for h, w in [(4, 6), (5, 7), (2, 9), (9, 3), (8, 8)]:
        for ceil in (True, False):
            if min(shapes.pool_out(h, k, s, p, ceil), shapes.pool_out(w, k, s, p, ceil)) < 1:
                continue
            x = tie_free(rng, (2, 3, h, w))
            layer = Pooling(kernel_size=k, stride=s, pad=p, dtype=dtype,
                            round_mode="CEIL" if ceil else "FLOOR")
            y = layer.forward(x)
            dy = rng.standard_normal(y.shape)
            _, idx_ref = ref.max_pool(x, (k, k), (s, s), (p, p), ceil)
            assert_close(layer.backward(dy), ref.max_pool_backward(dy, idx_ref, x.shape),
                         dtype)


def test_backward_without_mask_diff_equals_backward_with_it(rng):
    x = tie_free(rng, (2, 2, 5, 5))
    layer = Pooling(kernel_size=3, stride=2, return_mask=True, dtype=np.float64)
    y, mask = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(layer.backward(dy), layer.backward(dy, np.ones_like(mask)))


def test_repeated_backward_does_not_accumulate_into_bottom_diff(rng):
    for pool in ("MAX", "AVE"):
        x = tie_free(rng, (1, 2, 6, 5))
        layer = Pooling(kernel_size=3, stride=2, pad=1, pool=pool, dtype=np.float64)
        dy = rng.standard_normal(layer.forward(x).shape)
        np.testing.assert_array_equal(layer.backward(dy), layer.backward(dy))


def test_propagate_down_false_returns_none(rng):
    x = rng.standard_normal((1, 1, 4, 4))
    layer = Pooling(kernel_size=2, stride=2)
    dy = np.ones(layer.forward(x).shape)
    assert layer.backward(dy, propagate_down=False) is None
    unpool = Unpooling(kernel_size=2, stride=2)
    p = Pooling(kernel_size=2, stride=2, return_mask=True)
    yu = unpool.forward(*p.forward(x))
    assert unpool.backward(np.ones(yu.shape), propagate_down=(False, False)) == (None, None)


# ------------------------------------------------------------------ gradients

def test_pooling_gradients_by_finite_differences(rng):
    for i in range(12):
        cfg = random_config(rng)
        x = tie_free(rng, cfg["shape"], spacing=0.01)
        for pool in ("MAX", "AVE"):
            layer = make_pool(cfg, pool=pool)
            check_gradients(layer, x, exhaustive=(i < 2), seed=i)


def test_unpooling_gradients_by_finite_differences(rng):
    # distinct mask positions: where two inputs share one, the later wins the forward while
    # backward gathers for both (Caffe's and PyTorch's rule), so no finite difference agrees
    done = 0
    while done < 12:
        cfg = random_config(rng)
        k, s, p = cfg["k"], cfg["s"], cfg["p"]
        n, c, h, w = cfg["shape"]
        out = (shapes.unpool_out(h, k[0], s[0], p[0]), shapes.unpool_out(w, k[1], s[1], p[1]))
        if min(out) <= 0 or out[0] * out[1] < h * w:
            continue
        mask = np.stack([rng.choice(out[0] * out[1], h * w, replace=False)
                         for _ in range(n * c)]).reshape(n, c, h, w)
        unpool = Unpooling(kernel_size=k, stride=s, pad=p, dtype=np.float64)
        check_gradients(unpool, rng.standard_normal((n, c, h, w)), mask.astype(np.float64),
                        exhaustive=(done < 2), seed=done)
        done += 1


# ------------------------------------------------------------------ unpooling

def test_unpooling_matches_reference_for_random_masks(dtype, rng):
    for i in range(NUM_CONFIGS):
        cfg = random_config(rng)
        k, s, p = cfg["k"], cfg["s"], cfg["p"]
        n, c, h, w = cfg["shape"]
        out = (shapes.unpool_out(h, k[0], s[0], p[0]), shapes.unpool_out(w, k[1], s[1], p[1]))
        if min(out) <= 0:
            continue
        # random positions, duplicates included: the later input in scan order must win
        mask = rng.integers(0, out[0] * out[1], size=(n, c, h, w))
        mask = mask if i % 2 else mask.astype(dtype)
        x = rng.standard_normal((n, c, h, w))
        layer = Unpooling(kernel_size=k, stride=s, pad=p, dtype=dtype)
        y = layer.forward(x, mask)
        assert y.shape == (n, c) + out
        assert_close(y, ref.unpool(x, mask, out), dtype)
        dy = rng.standard_normal(y.shape)
        assert_close(layer.backward(dy)[0], ref.unpool_backward(dy, mask), dtype)


@pytest.mark.parametrize("mask_dtype", [np.float32, np.float64, np.int32, np.int64])
def test_unpooling_of_2x2_blocks_matches_the_scatter_reference(dtype, mask_dtype, rng):
    # indices inside their input's 2x2 block take the block writer; one index moved out of
    # its block (here onto another input's position: the later one wins) takes the scatter
    for (h, w), out in (((5, 6), (10, 12)), ((5, 6), (11, 13)), ((4, 3), (9, 8)),
                        ((1, 1), (2, 2)), ((3, 40), (7, 81))):
        rows = 2 * np.arange(h)[:, None] * out[1] + 2 * np.arange(w)[None, :]
        pick = rng.integers(0, 4, size=(2, 3, h, w))
        mask = rows + (pick % 2) + (pick // 2) * out[1]
        x = rng.standard_normal((2, 3, h, w)) + 3.0
        for moved in (False, True):
            m = mask.copy()
            if moved:
                m[1, 2, -1, -1] = m[1, 2, 0, 0]
            layer = Unpooling(kernel_size=2, stride=2, out_size=out, dtype=dtype)
            y = layer.forward(x, m.astype(mask_dtype))
            assert_close(y, ref.unpool(x, m, out), dtype)
            dy = rng.standard_normal(y.shape)
            assert_close(layer.backward(dy)[0], ref.unpool_backward(dy, m), dtype)


def test_unpooling_of_2x2_blocks_is_identical_at_one_and_two_threads(rng):
    x = rng.standard_normal((8, 64, 64, 64)).astype(np.float32)   # past pooling's grain
    y, mask = Pooling(kernel_size=2, stride=2, return_mask=True).forward(x)

    def run():
        layer = Unpooling(kernel_size=2, stride=2, out_size=(129, 128))
        up = layer.forward(y, mask)
        return up, layer.backward(up + 1)[0]

    one, two = at_threads(1, run), at_threads(2, run)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one[0], ref.unpool(y, mask, (129, 128)))


def test_unpooling_inverts_pooling_with_out_size(rng):
    x = tie_free(rng, (2, 3, 7, 9)) + 0.5     # no zeros: nonzero marks a scattered value
    y, mask = Pooling(kernel_size=2, stride=2, return_mask=True, dtype=np.float64).forward(x)
    up = Unpooling(kernel_size=2, stride=2, out_size=(7, 9), dtype=np.float64).forward(y, mask)
    kept = up != 0
    np.testing.assert_array_equal(up[kept], x[kept])
    assert kept.sum() == y.size
    np.testing.assert_array_equal(np.sort(up[kept]), np.sort(y.ravel()))


def test_min_unpool_size_is_the_least_size_pooling_to_the_input(rng):
    for _ in range(100):
        cfg = random_config(rng)
        pooled = cfg["shape"][2]
        k, s, p = cfg["k"][0], cfg["s"][0], cfg["p"][0]
        m = min_unpool_size(pooled, k, s, p)
        assert shapes.pool_out(m, k, s, p, True) >= pooled
        assert m == 1 or shapes.pool_out(m - 1, k, s, p, True) < pooled


# ------------------------------------------------------------------ PyTorch

def test_max_and_ave_match_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for _ in range(NUM_CONFIGS):
        cfg = random_config(rng, torch_pad=True)
        k, s, p, ceil = cfg["k"], cfg["s"], cfg["p"], cfg["ceil"]
        x = tie_free(rng, cfg["shape"])
        tx = torch.tensor(x, requires_grad=True)
        ty, tidx = F.max_pool2d(tx, k, s, p, ceil_mode=ceil, return_indices=True)
        layer = make_pool(cfg, dtype=dtype, return_mask=True)
        y, mask = layer.forward(x)
        assert_close(y, ty.detach().numpy(), dtype, scale=x.size)
        np.testing.assert_array_equal(mask, tidx.numpy())
        dy = rng.standard_normal(y.shape)
        (tdx,) = torch.autograd.grad(ty, tx, torch.tensor(dy))
        assert_close(layer.backward(dy, mask), tdx.numpy(), dtype)

        tx = torch.tensor(x, requires_grad=True)
        ta = F.avg_pool2d(tx, k, s, p, ceil_mode=ceil, count_include_pad=True)
        ave = make_pool(cfg, pool="AVE", dtype=dtype)
        assert_close(ave.forward(x), ta.detach().numpy(), dtype, scale=x.size)
        (tdx,) = torch.autograd.grad(ta, tx, torch.tensor(dy))
        assert_close(ave.backward(dy), tdx.numpy(), dtype)


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0))])
def test_ties_and_nans_pick_the_same_argmax_as_torch(rng, k, s, p):
    torch = pytest.importorskip("torch")
    x = rng.integers(0, 3, size=(2, 3, 9, 8)).astype(np.float64)   # many ties
    x[rng.random(x.shape) < 0.05] = np.nan
    ty, tidx = torch.nn.functional.max_pool2d(torch.tensor(x), k, s, p, ceil_mode=True,
                                              return_indices=True)
    y, mask = Pooling(kernel_size=k, stride=s, pad=p, return_mask=True,
                      dtype=np.float64).forward(x)
    np.testing.assert_array_equal(mask, tidx.numpy())
    np.testing.assert_array_equal(y, ty.numpy())


def test_unpooling_matches_torch_max_unpool2d(dtype, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for _ in range(NUM_CONFIGS):
        cfg = random_config(rng, torch_pad=True)
        k, s, p = cfg["k"], cfg["s"], cfg["p"]
        x = tie_free(rng, cfg["shape"])
        ty, tidx = F.max_pool2d(torch.tensor(x), k, s, p, ceil_mode=cfg["ceil"],
                                return_indices=True)
        out = cfg["shape"][2:]
        tv = ty.clone().requires_grad_(True)
        tu = F.max_unpool2d(tv, tidx, k, s, p, output_size=out)
        unpool = Unpooling(kernel_size=k, stride=s, pad=p, out_size=out, dtype=dtype)
        u = unpool.forward(ty.numpy(), tidx.numpy())
        assert_close(u, tu.detach().numpy(), dtype, scale=x.size)
        du = rng.standard_normal(u.shape)
        (tdv,) = torch.autograd.grad(tu, tv, torch.tensor(du))
        assert_close(unpool.backward(du)[0], tdv.numpy(), dtype)


# ------------------------------------------------------------------ threads

def test_one_and_two_threads_give_bit_identical_results(rng, restore_threads):
    x = rng.standard_normal((3, 5, 17, 13))
    results = []
    for threads in (1, 2):
        convnet.set_num_threads(threads)
        out = []
        for pool, k, s, p in [("MAX", 3, 2, 1), ("AVE", 3, 2, 1), ("MAX", 2, 2, 0),
                              ("AVE", (2, 3), (1, 2), (1, 0))]:
            layer = Pooling(kernel_size=k, stride=s, pad=p, pool=pool, dtype=np.float32)
            y = layer.forward(x)
            dy = np.random.default_rng(1).standard_normal(y.shape)
            out += [y, layer.backward(dy)]
        for k in (3, 2):
            pool = Pooling(kernel_size=k, stride=2, return_mask=True)
            y, mask = pool.forward(x)
            out += [y, mask, pool.backward(np.random.default_rng(3).standard_normal(y.shape))]
            unpool = Unpooling(kernel_size=k, stride=2, out_size=(17, 13))
            up = unpool.forward(y, mask)
            out += [up, unpool.backward(np.random.default_rng(2).standard_normal(up.shape))[0]]
        results.append(out)
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ rejected inputs

@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel_size=3, pad=3), r"Pooling 'p': pad \(3\) must be smaller than kernel_size \(3\)"),
    (dict(kernel_size=(3, 2), pad=(1, 2)), r"pad \(\(1, 2\)\) must be smaller than kernel_size"),
    (dict(kernel_size=2, pool="STOCHASTIC"), r"pool must be one of MAX, AVE, got 'STOCHASTIC'"),
    (dict(kernel_size=2, round_mode="UP"), r"round_mode must be one of CEIL, FLOOR"),
    (dict(kernel_size=0), r"kernel_size must be >= 1, got 0"),
    (dict(kernel_size=2, stride=0), r"stride must be >= 1, got 0"),
    (dict(kernel_size=2, pad=-1), r"pad must be >= 0, got -1"),
    (dict(kernel_size=2.5), r"kernel_size must be an int or an \(h, w\) pair"),
    (dict(), r"kernel_size is required"),
    (dict(kernel_size=2, global_pooling=True), r"kernel_size cannot be given with global"),
    (dict(global_pooling=True, stride=2), r"global_pooling=True needs stride 1 and pad 0"),
    (dict(kernel_size=2, pool="AVE", return_mask=True), r"return_mask=True needs pool='MAX'"),
    (dict(kernel_size=2, return_mask=1), r"return_mask must be True or False"),
])
def test_pooling_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Pooling(name="p", **kwargs)


def test_pooling_rejects_empty_output_and_non_4d_bottoms():
    layer = Pooling(kernel_size=3, stride=2, name="pool5")
    with pytest.raises(ShapeError, match=r"Pooling 'pool5': input 2x2 with kernel_size 3, "
                                         r"stride 2, pad 0 gives an empty output \(0x0\)"):
        layer.forward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ShapeError, match=r"input 2x5 .* gives an empty output \(0x2\)"):
        layer.setup((1, 1, 2, 5))
    with pytest.raises(ShapeError, match=r"bottom must be 4-D \(N, C, H, W\), got shape 4x4"):
        layer.forward(np.zeros((4, 4)))


def test_float32_mask_refuses_planes_it_cannot_index_exactly():
    with pytest.raises(ShapeError, match=r"up to 2\*\*24 pixels, got 4097x4097"):
        Pooling(kernel_size=2, return_mask=True).setup((1, 1, 4097, 4097))
    Pooling(kernel_size=2, return_mask=True, dtype=np.float64).setup((1, 1, 4097, 4097))


def test_backward_before_forward_is_an_error():
    with pytest.raises(StateError, match="backward called before forward"):
        Pooling(kernel_size=2).backward(np.zeros((1, 1, 1, 1)))


def _pooled(rng, shape=(1, 2, 4, 4)):
    y, mask = Pooling(kernel_size=2, stride=2, return_mask=True).forward(
        rng.standard_normal(shape))
    return y, mask


@pytest.mark.parametrize("value, shown", [(99, "99"), (-1, "-1"), (16, "16"),
                                          (np.nan, "nan"), (2.5, "2.5")])
def test_unpooling_rejects_bad_mask_values(rng, value, shown):
    y, mask = _pooled(rng)
    mask[0, 1, 1, 0] = value
    layer = Unpooling(kernel_size=2, stride=2, name="unpool1")
    with pytest.raises(DataError, match=rf"Unpooling 'unpool1': invalid max index {shown} at "
                                        rf"\(0, 1, 1, 0\) for a 4x4 output"):
        layer.forward(y, mask)
    if isinstance(value, int):
        with pytest.raises(DataError, match=rf"invalid max index {shown} at \(0, 1, 1, 0\)"):
            layer.forward(y, mask.astype(np.int64))


def test_unpooling_reports_the_first_bad_index_in_scan_order(rng):
    y, mask = _pooled(rng, (2, 3, 4, 4))
    mask[1, 2, 1, 1] = 50
    mask[1, 0, 0, 1] = -3
    with pytest.raises(DataError, match=r"invalid max index -3 at \(1, 0, 0, 1\)"):
        Unpooling(kernel_size=2, stride=2).forward(y, mask)


def test_unpooling_backward_gathers_through_the_mask_forward_saw(rng):
    y, mask = _pooled(rng)
    layer = Unpooling(kernel_size=2, stride=2)
    up = layer.forward(y, mask)
    dy = rng.standard_normal(up.shape)
    expected = ref.unpool_backward(dy, mask)
    mask[...] = 1e9         # changed (even invalid) after forward: backward must not read it
    assert_close(layer.backward(dy)[0], expected, np.float32)


def test_unpooling_rejects_bad_shapes_and_sizes(rng):
    y, mask = _pooled(rng, (1, 2, 5, 5))
    with pytest.raises(ShapeError, match=r"Unpooling 'u': mask must have x's shape 1x2x3x3, "
                                         r"got 1x2x3x2"):
        Unpooling(kernel_size=2, stride=2, name="u").forward(y, mask[..., :2])
    with pytest.raises(ShapeError, match=r"out_size \(4, 5\) is smaller than a 3x3 input needs "
                                         r"with kernel_size 2, stride 2, pad 0: at least \(5, 5\)"):
        Unpooling(kernel_size=2, stride=2, out_size=(4, 5)).forward(y, mask)
    with pytest.raises(ShapeError, match=r"bottom 0 \(x\) must be 4-D"):
        Unpooling(kernel_size=2).forward(y[0], mask[0])
    with pytest.raises(ShapeError, match=r"input 1x1 .* gives an empty output \(0x0\)"):
        Unpooling(kernel_size=2, stride=2, pad=1).forward(np.ones((1, 1, 1, 1)),
                                                          np.zeros((1, 1, 1, 1)))
    with pytest.raises(ConfigError, match=r"pad \(2\) must be smaller than kernel_size \(2\)"):
        Unpooling(kernel_size=2, pad=2)
    with pytest.raises(ConfigError, match=r"out_size must be >= 1"):
        Unpooling(kernel_size=2, out_size=(0, 3))
    with pytest.raises(ShapeError, match=r"expects 2 bottoms, got 1"):
        Unpooling(kernel_size=2).forward(y)


def test_empty_batch_gives_empty_tops_and_diffs():
    x = np.zeros((0, 3, 5, 5))
    for pool in ("MAX", "AVE"):
        layer = Pooling(kernel_size=3, stride=2, pad=1, pool=pool)
        y = layer.forward(x)
        assert y.shape == (0, 3, 3, 3) and layer.backward(y).shape == x.shape
    unpool = Unpooling(kernel_size=2, stride=2)
    up = unpool.forward(x, x)
    assert up.shape == (0, 3, 10, 10) and unpool.backward(up)[0].shape == x.shape


def test_kernels_take_int64_indices_for_huge_planes(rng, dtype):
    # the layers switch to int64 indices past 2**31 pixels per plane; same kernels, checked
    # here on a small plane
    from convnet.backend import cpu
    x = tie_free(rng, (2, 3, 7, 6)).astype(dtype)
    y = np.empty((2, 3, 4, 3), dtype)
    argmax = np.empty(y.shape, np.int64)
    cpu.pooling_max_forward(x, y, argmax, None, (2, 2), (2, 2), (0, 0))
    y_ref, idx_ref = ref.max_pool(x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(argmax, idx_ref)
    dx = np.empty_like(x)
    cpu.pooling_max_backward(y, argmax, dx)
    assert_close(dx, ref.max_pool_backward(y, idx_ref, x.shape), dtype)
    up = np.empty_like(x)
    index = np.empty(y.shape, np.int64)
    assert cpu.pooling_unpool_forward(y, argmax, up, index) == -1
    assert_close(up, ref.unpool(y, argmax, (7, 6)), dtype)
    cpu.pooling_unpool_backward(x, index, y)
    assert_close(y, ref.unpool_backward(x, argmax), dtype)
