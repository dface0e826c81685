"""The installed package: compiled modules, public names, thread control."""

import numpy as np
import pytest

import convnet
import convnet.layers


def test_every_public_layer_name_resolves_to_a_layer_class():
    for name in convnet.layers._FAMILY:
        cls = getattr(convnet.layers, name)
        assert issubclass(cls, convnet.layers.Layer), name


def test_unknown_layer_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchLayer"):
        convnet.layers.NoSuchLayer


def test_kernels_are_built_with_openmp():
    # CI's compiler has OpenMP; a build without it would silently run every loop on one thread
    assert convnet.openmp_enabled()


def test_parallel_copy_copies_exactly():
    from convnet._cpu._threads import parallel_copy
    src = np.arange(300_001, dtype=np.float32)
    dst = np.zeros_like(src)
    parallel_copy(src, dst)
    np.testing.assert_array_equal(dst, src)


def test_layer_rejects_unsupported_dtype():
    from convnet.layers.base import Layer
    with pytest.raises(convnet.ConfigError, match="dtype must be float32 or float64, got int32"):
        Layer(name="x", dtype=np.int32)


def test_fill_and_seed_are_reproducible():
    from convnet.fillers import fill
    convnet.seed(3)
    a = fill("msra", (4, 3, 3, 3), np.float32)
    convnet.seed(3)
    b = fill("msra", (4, 3, 3, 3), np.float32)
    np.testing.assert_array_equal(a, b)
