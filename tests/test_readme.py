"""The README's API example runs as written (it is the first thing a newcomer copies)."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_blocks():
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


@pytest.mark.skipif(not os.path.exists(README), reason="README.md not next to tests/")
def test_readme_api_example_runs(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        namespace = {}
        exec(compile(code, "README.md", "exec"), namespace)
    assert os.path.exists(tmp_path / "snap.npz") and os.path.exists(tmp_path / "weights.npz")
    # 50 steps on one batch whose labels follow the sign of channel 0: the loss must fall
    losses = namespace["losses"]
    assert losses[-1] < 0.7 * losses[0], losses
