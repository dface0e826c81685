"""Helpers that craft .npz files for the bad-input tests (tests/test_bad_inputs.py and the
adversarial worker, which runs in a subprocess without pytest)."""

import numpy as np


def rewrite_npz(src, dst, change):
    """Copy the .npz ``src`` to ``dst`` with ``change(arrays)`` applied (no pickle)."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    np.savez(dst, **arrays)
    return dst
