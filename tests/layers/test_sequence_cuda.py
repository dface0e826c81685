"""The sequence layers (InnerProduct, Embed, Sigmoid, TanH, Softmax, Scale, Split, Slice,
Reshape, LSTMUnit) on the CUDA backend against the CPU backend in float32 (skipped without a
GPU), and their backend functions' names on both backends."""

import inspect

import numpy as np
import pytest

from convnet.backend import cpu as cpu_backend

NEW_FUNCTIONS = ["inner_product_forward", "inner_product_backward_data",
                 "inner_product_backward_weight", "inner_product_backward_bias",
                 "inner_product_embed_forward", "inner_product_embed_backward",
                 "activation_sigmoid_forward", "activation_sigmoid_backward",
                 "activation_tanh_forward", "activation_tanh_backward",
                 "activation_softmax_forward", "activation_softmax_backward",
                 "normalization_scale_forward", "normalization_scale_backward",
                 "recurrent_lstm_unit_forward", "recurrent_lstm_unit_backward"]


def test_every_new_backend_function_has_a_cuda_twin_with_the_same_signature():
    from convnet.backend import cuda as cuda_backend
    for name in NEW_FUNCTIONS:
        assert inspect.signature(getattr(cuda_backend, name)) == \
            inspect.signature(getattr(cpu_backend, name)), name


def _cases(rng):
    from convnet.layers import (Embed, InnerProduct, LSTMUnit, Reshape, Scale, Sigmoid,
                                Slice, Softmax, Split, TanH)
    x = rng.standard_normal((3, 4, 5))
    return [
        ("ip", lambda: InnerProduct(num_output=6, bias_filler="gaussian"), [x]),
        ("ip_t", lambda: InnerProduct(num_output=6, axis=2, transpose=True), [x]),
        ("embed", lambda: Embed(input_dim=7, num_output=4, bias_filler="gaussian"),
         [rng.integers(0, 7, size=(3, 5))]),
        ("sigmoid", Sigmoid, [x]), ("tanh", TanH, [x]),
        ("softmax", lambda: Softmax(axis=1), [x]),
        ("scale", lambda: Scale(axis=1, num_axes=2, bias_term=True, filler="gaussian"), [x]),
        ("scale2", lambda: Scale(axis=0), [x, rng.standard_normal((3, 4))]),
        ("split", lambda: Split(num_tops=2), [x]),
        ("slice", lambda: Slice(axis=2, slice_point=[2]), [x]),
        ("reshape", lambda: Reshape(shape=[0, -1]), [x]),
        ("lstm_unit", lambda: LSTMUnit(forget_bias=0.5),
         [rng.standard_normal((1, 3, 4)), rng.standard_normal((1, 3, 16)),
          (rng.random((1, 3)) > 0.3).astype(np.float64)]),
    ]


def _run(layer, bottoms):
    from convnet.backend import get
    be = get(layer.device)
    out = layer.forward(*[be.asarray(b) for b in bottoms])
    tops = out if isinstance(out, tuple) else (out,)
    values = [be.to_numpy(t).astype(np.float64) for t in tops]
    grads = [np.random.default_rng(1).standard_normal(v.shape).astype(np.float32)
             for v in values]
    diffs = layer.backward(*[be.asarray(g) for g in grads])
    diffs = diffs if isinstance(diffs, tuple) else (diffs,)
    values += [be.to_numpy(d).astype(np.float64) for d in diffs if d is not None]
    values += [be.to_numpy(p.diff).astype(np.float64) for p in layer.params]
    return values


@pytest.mark.cuda
def test_sequence_layers_on_cuda_match_the_cpu_backend():
    rng = np.random.default_rng(0)
    for name, make, bottoms in _cases(rng):
        bottoms = [b.astype(np.float32) if b.dtype.kind == "f" else b for b in bottoms]
        layer = make()
        expected = _run(layer, bottoms)
        layer.to("cuda")
        for p in layer.params:
            p.zero_diff()
        got = _run(layer, bottoms)
        assert len(got) == len(expected), name
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.cuda
def test_embed_bad_index_on_cuda_is_a_data_error():
    from convnet.errors import DataError
    from convnet.layers import Embed
    emb = Embed(input_dim=3, num_output=2, name="e").to("cuda")
    with pytest.raises(DataError, match="index 3 at position \\(1,\\)"):
        emb.forward(np.array([0, 3, 1]))
