"""convnet's exception types and the one message helper.

Every check that rejects user input raises through :func:`fail` (or one of the ``check_*``
helpers below), so messages read the same everywhere::

    Deconvolution 'up1': output_padding (2) must be smaller than stride (2) or dilation (1)

The exception types subclass the built-in ones users already catch (``ValueError`` for bad
parameters and shapes, ``RuntimeError`` for calls out of order, ``OSError`` for files).
"""


class ConvnetError(Exception):
    """Base class of every error convnet raises on purpose."""


class ConfigError(ConvnetError, ValueError):
    """A layer, net or solver parameter is invalid (bad value, bad combination)."""


class ShapeError(ConvnetError, ValueError):
    """A bottom, top diff, param or loaded array has the wrong shape or layout."""


class DataError(ConvnetError, ValueError):
    """Data-dependent input is invalid: a label outside the classes, an unpooling index
    outside the output plane, a non-finite loss."""


class StateError(ConvnetError, RuntimeError):
    """A call out of order, e.g. backward before forward."""


class DeviceError(ConvnetError, RuntimeError):
    """Arrays from different devices mixed in one call, or a device that is not available."""


class FileFormatError(ConvnetError, OSError):
    """A weights or snapshot file is missing, truncated, corrupted or does not match."""


def where(owner):
    """The prefix that names who complains: ``Convolution 'conv1'`` for a layer (anything with
    a ``name`` and a class), the string itself for a string (a file, a flag)."""
    if owner is None:
        return "convnet"
    if isinstance(owner, str):
        return owner
    name = getattr(owner, "name", None)
    kind = getattr(owner, "type_name", type(owner).__name__)
    return f"{kind} '{name}'" if name else kind


def shown(value, width=40):
    """``repr(value)`` on one line, cut to ``width`` characters (for messages)."""
    return " ".join(repr(value).split())[:width]


def fail(owner, message, exc=ConfigError):
    """Raise ``exc`` with ``"<owner>: <message>"``, on one line (a value shown in the message,
    such as a multi-dimensional array's repr, never breaks it)."""
    text = f"{where(owner)}: {message}"
    if "\n" in text:
        text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    raise exc(text)
