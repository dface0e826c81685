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


def _run_python(code, cwd, env_extra=None, drop=()):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "PYTHONPATH"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_an_unbuilt_source_tree_says_how_to_fix_the_import(tmp_path):
    import os
    import shutil
    src = os.path.dirname(convnet.__file__)
    shutil.copytree(src, tmp_path / "convnet",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    proc = _run_python("import convnet", tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: convnet was imported from")
    assert "compiled modules are not built" in last and "build_ext --inplace" in last


def test_openmp_spins_briefly_unless_the_user_chose_a_policy(tmp_path):
    from conftest import CONVNET_PATH
    code = (f"import sys; sys.path.insert(0, {CONVNET_PATH!r}); import os, convnet; "
            f"print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    drop = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    assert _run_python(code, tmp_path, drop=drop).stdout.split() == ["None", "3000"]
    chosen = _run_python(code, tmp_path, {"OMP_WAIT_POLICY": "ACTIVE"}, drop=drop)
    assert chosen.stdout.split() == ["ACTIVE", "None"]
    spin = _run_python(code, tmp_path, {"GOMP_SPINCOUNT": "1000"}, drop=drop)
    assert spin.stdout.split() == ["None", "1000"]
