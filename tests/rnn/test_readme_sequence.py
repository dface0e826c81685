"""The README's "Sequence models" example runs as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "README.md")


@pytest.mark.skipif(not os.path.exists(README), reason="README.md not next to tests/")
def test_sequence_example_runs():
    text = open(README).read()
    section = text.split("## Sequence models", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```py\n(.*?)```", section, flags=re.S)
    assert blocks, "the Sequence models section has no example"
    exec(compile(blocks[0], "README.md", "exec"), {})
