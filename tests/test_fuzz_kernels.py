"""Fuzzing the compiled kernels through the public layer API, in a subprocess.

tests/fuzz_worker.py runs a few hundred random layer configurations and bottoms (valid and
invalid shapes, parameters, dtypes, layouts, labels, masks, NaN/Inf values) with a fixed
seed, under an address-space cap. A memory fault would kill the worker with a signal (a
negative return code here, naming the last case it started); any exception other than a
convnet error is listed in its JSON summary, and so is a bad label or unpooling index whose
DataError names another position than the first bad one in row-major order.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import CONVNET_PATH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "fuzz_worker.py")
CASES = 300


def run_worker(args, threads):
    env = dict(os.environ, PYTHONPATH=CONVNET_PATH, OMP_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, WORKER, *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=300)
    started = [ln for ln in result.stderr.splitlines() if ln.startswith("case ")]
    last = started[-1][:200] if started else "none"
    assert result.returncode >= 0, (
        f"fuzz worker killed by signal {-result.returncode} during {last}")
    assert result.returncode == 0, f"fuzz worker failed during {last}:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def describe(defects):
    return "\n".join(f"{d['case']}: {d['error'][:300]}\n{d['where'][-400:]}" for d in defects)


@pytest.mark.parametrize("seed, threads", [(20261122, 2), (7, 1)])
def test_random_layer_inputs_never_crash_and_fail_only_with_convnet_errors(seed, threads):
    summary = run_worker([seed, CASES], threads)
    assert summary["cases"] == CASES
    assert not summary["defects"], describe(summary["defects"])
    # the generator must exercise both sides: runs that succeed and inputs that are refused
    assert summary["ok"] >= CASES // 5 and summary["rejected"] >= CASES // 5, summary
    assert {"ConfigError", "ShapeError", "DataError"} <= set(summary["kinds"]), summary


def test_outputs_too_large_for_memory_are_refused_with_a_shape_error():
    # sizes within the parameter bound (2**31 - 1) give outputs refused by setup (ShapeError);
    # sizes past it are refused by the constructor (ConfigError, the bound in the message)
    summary = run_worker(["huge"], 1)
    assert summary["cases"] == 24
    assert not summary["defects"], describe(summary["defects"])
    assert summary["kinds"] == {"ShapeError": 12, "ConfigError": 12}, summary
