"""The README's guarantees under adversarial input, each group in a subprocess with a memory
cap (tests/adversarial_worker.py): geometry that cannot overflow (every size parameter of
every magnitude, results equal to the plain-loop references where computed), sequences of
calls whose checks never depend on an earlier call, and crafted or mutated files for every
reader, each refused with a FileFormatError naming the file and changing nothing. The
scripts turn a bad file, an undecodable image or an exhausted memory into one line and exit
status 2.
"""

import json
import os
import resource
import subprocess
import sys
import zlib

import numpy as np
import pytest

from conftest import CONVNET_PATH
from test_bad_inputs import check_usage_error, run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "adversarial_worker.py")
#: address-space cap of every script run here (the worker sets its own)
SCRIPT_ADDRESS_SPACE = 3 << 30


def run_worker(group):
    env = dict(os.environ, PYTHONPATH=CONVNET_PATH, OMP_NUM_THREADS="2")
    result = subprocess.run([sys.executable, WORKER, group], env=env, capture_output=True,
                            text=True, timeout=240)
    started = [ln for ln in result.stderr.splitlines() if ln.startswith("case ")]
    last = started[-1][:200] if started else "none"
    assert result.returncode >= 0, f"worker killed by signal {-result.returncode} during {last}"
    assert result.returncode == 0, f"worker failed during {last}:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def describe(defects):
    return "\n".join(f"{d['case']}: {d['problem']}: {d['error'][:300]}\n{d['where'][-400:]}"
                     for d in defects)


def test_size_parameters_of_every_magnitude_compute_exactly_or_are_refused():
    summary = run_worker("geometry")
    assert not summary["defects"], describe(summary["defects"])
    outcomes = summary["outcomes"]
    # both sides exercised: geometries at the bound computed (checked against the references)
    # and refused ones, by the parameter bound and by the shape checks
    assert summary["cases"] >= 300 and outcomes.get("ok", 0) >= 80, outcomes
    assert outcomes.get("ConfigError", 0) >= 80 and outcomes.get("ShapeError", 0) >= 20, outcomes


def test_odd_values_of_every_parameter_and_argument_raise_only_convnet_errors():
    summary = run_worker("params")
    assert not summary["defects"], describe(summary["defects"])
    assert summary["cases"] >= 1500, summary["outcomes"]
    assert summary["outcomes"].get("ok", 0) >= 100, summary["outcomes"]


def test_call_sequences_and_odd_inputs_never_leave_sticky_state():
    summary = run_worker("calls")
    assert not summary["defects"], describe(summary["defects"])
    assert summary["outcomes"] == {"ok": summary["cases"]} and summary["cases"] >= 14


def test_crafted_and_mutated_files_raise_file_format_error_and_change_nothing():
    summary = run_worker("files")
    assert not summary["defects"], describe(summary["defects"])
    outcomes = summary["outcomes"]
    assert summary["cases"] >= 200 and outcomes.get("FileFormatError", 0) >= 180, outcomes
    assert set(outcomes) <= {"ok", "FileFormatError"}, outcomes


# ------------------------------------------------------------------------------- scripts
def png_header_only(path, width, height):
    """A PNG whose header declares width x height (no pixel data): PIL refuses it as a
    decompression bomb when it opens the file, before decoding anything."""
    def chunk(kind, data):
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def capped():
    resource.setrlimit(resource.RLIMIT_AS, (SCRIPT_ADDRESS_SPACE, SCRIPT_ADDRESS_SPACE))


def files_for_scripts(tmp):
    from PIL import Image
    np.save(os.path.join(tmp, "weights.npy"), np.ones(3))
    os.replace(os.path.join(tmp, "weights.npy"), os.path.join(tmp, "renamed.npz"))
    np.savez(os.path.join(tmp, "scalar.npz"), **{"score/weight": np.float32(1),
                                                "conv1_1/weight": np.ones((2, 3, 3, 3))})
    png_header_only(os.path.join(tmp, "bomb.png"), 20000, 20000)
    Image.new("RGB", (16, 16)).save(os.path.join(tmp, "small.png"))


TRAIN = ["--iters", "1", "--width", "4", "--train-images", "4", "--val-images", "4",
         "--out", "run"]
SCRIPT_CASES = [
    ("segment_renamed_npy", "segment.py",
     ["--weights", "renamed.npz", "--image", "small.png", "--out", "m.png"],
     r"renamed\.npz: weights file is truncated or corrupted"),
    ("segment_scalar_weights", "segment.py",
     ["--weights", "scalar.npz", "--image", "small.png", "--out", "m.png"],
     r"scalar\.npz: not the weights of a deconvnet"),
    ("segment_decompression_bomb", "segment.py",
     ["--weights", "renamed.npz", "--image", "bomb.png", "--out", "m.png"],
     r"--image bomb\.png: cannot read it"),
    ("segment_huge_resize", "segment.py",
     ["--weights", "renamed.npz", "--image", "small.png", "--out", "m.png", "--resize",
      "100000", "8"], r"--resize sizes must be at most 16384, got 100000 8"),
    ("resume_renamed_npy", "train_segmentation.py", ["--resume", "renamed.npz", *TRAIN],
     r"renamed\.npz: snapshot is truncated or corrupted"),
    ("resume_scalar_weights", "train_segmentation.py", ["--resume", "scalar.npz", *TRAIN],
     r"scalar\.npz: is not a convnet convnet-snapshot file"),
    ("huge_batch_size", "train_segmentation.py", [*TRAIN, "--batch-size", "100000000"],
     r"--batch-size must be at most 65536, got 100000000"),
    ("batch_past_memory", "train_segmentation.py", [*TRAIN, "--batch-size", "65536"],
     r"out of memory"),
]


@pytest.mark.parametrize("script, args, pattern",
                         [pytest.param(*c[1:], id=c[0]) for c in SCRIPT_CASES])
def test_scripts_report_bad_files_in_one_line_with_status_2(tmp_path, script, args, pattern):
    files_for_scripts(str(tmp_path))
    result = run_script(script, args, str(tmp_path), preexec_fn=capped)
    check_usage_error(result, pattern, str(tmp_path))
