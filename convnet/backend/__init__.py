"""Backends: one module per device exposing the same function names.

``convnet.backend.cpu`` runs on NumPy arrays through the compiled ``pyx/`` kernels;
``convnet.backend.cuda`` runs on :class:`convnet.cuda.DeviceArray` through libconvnet_cuda.
Layers never import either directly: they ask :func:`get` for the module of their device.
"""

from convnet.errors import DeviceError, shown

DEVICES = ("cpu", "cuda")


def normalize_device(device, owner=None):
    """'cpu', 'cuda', 'cuda:0' -> 'cpu' or 'cuda'."""
    name = str(device).lower()
    if name.startswith("cuda"):
        if name not in ("cuda", "cuda:0"):
            raise DeviceError(f"{_who(owner)}only device 'cuda' (GPU 0) is supported, got "
                              f"{shown(device)}")
        return "cuda"
    if name != "cpu":
        raise DeviceError(f"{_who(owner)}device must be 'cpu' or 'cuda', got {shown(device)}")
    return "cpu"


def _who(owner):
    from convnet.errors import where
    return f"{where(owner)}: " if owner is not None else ""


#: the backend modules imported so far, by device (a layer looks its backend up per call)
_LOADED = {}


def get(device):
    """The backend module for ``device`` ('cpu' or 'cuda')."""
    try:
        return _LOADED[device]
    except (KeyError, TypeError):
        pass
    if device == "cpu":
        from convnet.backend import cpu as module
    elif device == "cuda":
        from convnet.backend import cuda as module
    else:
        raise DeviceError(f"unknown device {device!r}")
    _LOADED[device] = module
    return module


def device_of(array):
    """'cuda' for a DeviceArray, else 'cpu'."""
    return "cuda" if getattr(array, "__cuda_array_interface__", None) is not None else "cpu"
