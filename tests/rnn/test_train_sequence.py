"""scripts/train_sequence.py and scripts/bench_rnn.py on tiny settings: flags, exit
statuses, snapshot and resume, eval-only, the final line, and Ctrl-C in a subprocess."""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import CONVNET_PATH

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "scripts")
TINY = ["--batch-size", "4", "--hidden", "8", "--embed", "4", "--max-len", "4", "--beam", "2"]
FINAL = re.compile(r"held-out exact match: greedy \d\.\d{3}, beam-2 \d\.\d{3}")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load("train_sequence")


@pytest.mark.parametrize("flags", [["--iters", "0"], ["--min-len", "5", "--max-len", "3"],
                                   ["--lr", "-1"], ["--eval-only"], ["--weights", "w.npz"],
                                   ["--bogus"]])
def test_bad_flags_exit_with_status_2(script, flags):
    with pytest.raises(SystemExit) as exc:
        script.main(flags)
    assert exc.value.code == 2


def test_missing_snapshot_is_status_2(script, tmp_path, capsys):
    assert script.main(["--resume", str(tmp_path / "nope.npz"), *TINY]) == 2
    assert "no such file" in capsys.readouterr().err


def test_train_resume_and_eval_only(script, tmp_path, capsys):
    out = tmp_path / "run"
    assert script.main(["--iters", "3", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    assert re.search(r"Iteration 3, loss = \d+\.\d{4}, lr = \S+, \d+\.\d seq/s, ETA", text)
    assert FINAL.search(text.strip().splitlines()[-1])
    assert (out / "weights.npz").exists() and (out / "snapshot.npz").exists()
    assert script.main(["--iters", "5", "--resume", str(out / "snapshot.npz"),
                        "--out", str(out), *TINY]) == 0
    assert "Resumed from" in capsys.readouterr().out
    assert script.main(["--eval-only", "--weights", str(out / "weights.npz"),
                        "--out", str(out), *TINY]) == 0
    assert FINAL.search(capsys.readouterr().out)


def test_a_run_interrupted_and_resumed_equals_an_uninterrupted_one(script, tmp_path,
                                                                   monkeypatch, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert script.main(["--iters", "4", "--out", str(a), *TINY]) == 0
    handlers = []
    real_signal = script.signal.signal

    def capture(signum, handler):
        handlers.append(handler)
        return real_signal(signum, handler)

    real_next = script.ReverseDigits.next_batch
    calls = []

    def next_batch(self):
        calls.append(1)
        if len(calls) == 2:          # Ctrl-C during the second iteration
            handlers[0](signal.SIGINT, None)
        return real_next(self)

    monkeypatch.setattr(script.signal, "signal", capture)
    monkeypatch.setattr(script.ReverseDigits, "next_batch", next_batch)
    assert script.main(["--iters", "4", "--out", str(b), *TINY]) == 130
    monkeypatch.undo()
    assert script.main(["--iters", "4", "--resume", str(b / "snapshot.npz"), "--out", str(b),
                        *TINY]) == 0
    assert "Resumed from" in capsys.readouterr().out
    wa, wb = np.load(a / "weights.npz"), np.load(b / "weights.npz")
    for k in wa.files:
        if wa[k].dtype.kind == "f":
            np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_ctrl_c_writes_a_snapshot_and_exits_130(tmp_path):
    env = dict(os.environ, PYTHONPATH=CONVNET_PATH + os.pathsep + os.environ.get(
        "PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "train_sequence.py"),
                             "--iters", "100000", "--out", str(tmp_path), *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(tmp_path))
    deadline = time.time() + 60
    line = ""
    while time.time() < deadline and "Iteration 1," not in line:
        line = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "snapshot written" in out
    assert (tmp_path / "snapshot.npz").exists()


def test_bench_rnn_function_runs_on_a_tiny_case(monkeypatch):
    bench = load("bench_rnn")
    monkeypatch.setitem(bench.CASE, "T", 3)
    monkeypatch.setitem(bench.CASE, "N", 2)
    monkeypatch.setitem(bench.CASE, "I", 4)
    monkeypatch.setitem(bench.CASE, "H", 5)
    lines = []
    res = bench.bench_lstm(repeat=1, log=lines.append)
    assert res["convnet_forward_s"] > 0 and res["two_layer_recompute_peak_bytes"] > 0
    assert any("peak memory" in line for line in lines)
