"""Shared fixtures: dtype, device (CUDA skipped without a GPU), seeded rng, tolerances."""

import os

# Two OpenMP runtimes share this process (convnet's libgomp and torch's own copy). With the
# default spin-waiting, each one's idle threads spin after every parallel region and starve
# the other's on a 2-core machine (measured: the pooling tests took 35-49 s instead of 3 s).
# Set before either runtime loads; it changes no result, only how idle threads wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import convnet  # noqa: E402


#: the folder the convnet under test was imported from (site-packages after `pip install .`,
#: the checkout after `setup.py build_ext --inplace`): subprocesses get it on PYTHONPATH so
#: they run the same convnet, never an unbuilt source tree
CONVNET_PATH = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))


def pytest_report_header(config):
    return (f"convnet {convnet.__version__} from {os.path.dirname(convnet.__file__)}; "
            f"openmp={convnet.openmp_enabled()}")


def cuda_unavailable_reason():
    """"" when GPU tests can run, else why not, as convnet.cuda found it (no library, an old
    driver, no GPU, ...): a skip on a misconfigured GPU machine must not look like 'no GPU'."""
    try:
        from convnet import cuda
        if cuda.is_available():
            return ""
        return cuda.unavailable_reason() or "convnet.cuda.is_available() is False"
    except Exception as exc:   # a broken CUDA build must never break the CPU suite
        return f"convnet.cuda failed to import: {exc}"


def cuda_available():
    return not cuda_unavailable_reason()


def pytest_collection_modifyitems(config, items):
    reason = cuda_unavailable_reason()
    if not reason:
        return
    skip = pytest.mark.skip(reason=f"CUDA tests need a GPU: {reason}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=[np.float64, np.float32], ids=["f64", "f32"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


def tolerance(dtype):
    """(rtol, atol) for comparing a layer against a float64 reference."""
    return (1e-10, 1e-12) if np.dtype(dtype) == np.float64 else (2e-4, 2e-5)


def at_threads(n, fn):
    """fn() with convnet on n threads, the thread count restored afterwards."""
    before = convnet.get_num_threads()
    convnet.set_num_threads(n)
    try:
        return fn()
    finally:
        convnet.set_num_threads(before)


def assert_close(actual, expected, dtype, scale=1.0):
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected,
                               rtol=rtol, atol=atol * scale)
