"""The README's Caffe section runs as written (its ```python caffe blocks)."""

import os
import re
import warnings

import pytest

pytest.importorskip("google.protobuf")
pytest.importorskip("onnx")

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "README.md")


@pytest.mark.skipif(not os.path.exists(README), reason="README.md not next to tests/")
def test_readme_caffe_example_runs(tmp_path, monkeypatch, capsys):
    with open(README) as f:
        blocks = re.findall(r"```python caffe\n(.*?)```", f.read(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        namespace = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, "README.md", "exec"), namespace)
    assert "<CaffeInfo deploy.prototxt (deconvnet, V1, TEST)>" in capsys.readouterr().out
    assert namespace["score"].shape == (1, 2, 16, 16)
    report = namespace["report"]
    assert report.skipped == [] and "conv1/weight" in report.matched
    assert (tmp_path / "tiny.onnx").exists() and (tmp_path / "tiny.caffemodel").exists()
