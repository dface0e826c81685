"""Solver snapshots and atomic .npz files.

A snapshot is one self-contained .npz (never pickled) holding everything a resumed run needs
to continue bit for bit as if it had never stopped (Caffe's .solverstate keeps only a path to
the weights and no random state, so its resumes drift):

- ``net/<layer>/<param>`` and ``net/<layer>/buffer:<key>``: weights and BatchNorm averages
- ``history/<slot>/<layer>/<param>``: momentum (SGD) or the two Adam moments
- ``__format__``: JSON metadata: format and version, solver type and hyper-parameters,
  iteration, the net's input shapes, the data iterator's state and the net's random state
  (Dropout streams)

Files are written atomically: a temp file in the target's directory, fsync, ``os.replace``,
fsync of the directory. A crash at any moment leaves either the old or the new complete file,
and the temp file is removed when writing fails.

>>> solver.snapshot("run/snap_1000.npz")
>>> SGDSolver(make_net(), **same_settings, data=loader).restore("run/snap_1000.npz")
"""

import json
import os
import tempfile
import zipfile

import numpy as np

from convnet.errors import ConvnetError, FileFormatError, ShapeError, fail

SNAPSHOT_FORMAT = "convnet-snapshot"
SNAPSHOT_VERSION = 1


def _current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# read once at import: os.umask can only be queried by setting it
_FILE_MODE = 0o666 & ~_current_umask()


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass    # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(fd)


def write_npz_atomic(path, arrays):
    """Write ``arrays`` (name -> array) as an uncompressed .npz at exactly ``path``,
    atomically (temp file in the same directory, fsync, os.replace, fsync of the directory)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        fail(path, f"cannot write: the folder {directory} does not exist", FileFormatError)
    if os.path.isdir(path):
        fail(path, "cannot write: it is a directory", FileFormatError)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=directory)
    except OSError as exc:
        fail(path, f"cannot write: creating a temp file in {directory} failed "
                   f"({exc.strerror or exc})", FileFormatError)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, FileFormatError):
            kept = ("the previous file is unchanged" if os.path.exists(path)
                    else "no file was written")
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise FileFormatError(f"{path}: cannot write ({reason}); {kept}") from exc
        raise
    _fsync_dir(directory)


def read_npz(path, what="file"):
    """Read every array of an .npz eagerly (no pickle); FileFormatError naming ``path`` for
    a missing, empty, truncated or corrupted file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        fail(path, f"{what} not found", FileFormatError)
    if os.path.getsize(path) == 0:
        fail(path, f"{what} is empty (0 bytes)", FileFormatError)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError,
            zipfile.LargeZipFile, NotImplementedError) as exc:
        fail(path, f"{what} is truncated or corrupted, not a readable .npz "
                   f"({type(exc).__name__}: {exc})", FileFormatError)


def to_json(value):
    """Make random and iterator states JSON-serialisable (ndarrays and NumPy scalars)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def from_json(value):
    """Inverse of :func:`to_json`."""
    if isinstance(value, dict):
        if set(value) == {"__ndarray__", "dtype"}:
            return np.array(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def save_snapshot(solver, path):
    """Write ``solver``'s complete state to ``path`` (see the module docstring)."""
    from convnet.net import META_KEY
    net = solver.net
    arrays = {f"net/{k}": v for k, v in net.state_arrays().items()}
    keys = [k for k, _ in net.named_params()]
    for key, slots in zip(keys, solver.history_arrays()):
        for s, h in enumerate(slots):
            arrays[f"history/{s}/{key}"] = h
    data = solver.data
    data_state = data.get_state() if data is not None and hasattr(data, "get_state") else None
    meta = {
        "format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION,
        "solver": type(solver).__name__, "hyper": solver.hyper_params(),
        "iter": int(solver.iter), "net": net.name,
        "input_shapes": {k: list(s) for k, s in net.input_shapes.items()},
        "history_slots": solver.history_slots, "history_started": solver.history_started,
        "data_state": to_json(data_state), "rng_state": to_json(net.get_rng_state()),
    }
    try:
        arrays[META_KEY] = np.array(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        fail(solver, f"cannot snapshot: the data iterator's get_state() or a layer's random "
                     f"state is not JSON-serialisable ({exc})")
    write_npz_atomic(path, arrays)


def load_snapshot(solver, path):
    """Restore ``solver`` (and its net and data iterator) from ``path``. Everything is checked
    before anything is modified: solver type, format version, every name and shape."""
    import warnings

    from convnet.net import META_KEY, _read_meta
    path = os.fspath(path)
    arrays = read_npz(path, "snapshot")
    meta = _read_meta(arrays, path, SNAPSHOT_FORMAT, SNAPSHOT_VERSION)
    try:
        kind, it, slots = meta["solver"], int(meta["iter"]), int(meta["history_slots"])
        started = bool(meta["history_started"])
        hyper = dict(meta["hyper"])
    except (KeyError, TypeError, ValueError) as exc:
        fail(path, f"snapshot metadata is incomplete ({exc!r})", FileFormatError)
    if isinstance(meta["iter"], bool) or not isinstance(meta["iter"], int) or it < 0:
        fail(path, f"snapshot iteration must be an int >= 0, got {meta['iter']!r}",
             FileFormatError)
    if kind != type(solver).__name__:
        fail(path, f"snapshot was written by a {kind}, cannot restore it into a "
                   f"{type(solver).__name__}", FileFormatError)
    if slots != solver.history_slots:
        fail(path, f"snapshot has {slots} history slot(s) per param, a {kind} keeps "
                   f"{solver.history_slots}", FileFormatError)
    net = solver.net
    if any(lyr.bottom_shapes is None for lyr in net.layers) and meta.get("input_shapes"):
        _setup_from_meta(net, meta["input_shapes"], path)
    net._require_setup("restoring a snapshot")

    weights = {k[4:]: v for k, v in arrays.items() if k.startswith("net/")}
    history = {k: v for k, v in arrays.items() if k.startswith("history/")}
    unknown = [k for k in arrays if k != META_KEY and k not in history
               and not k.startswith("net/")]
    if unknown:
        fail(path, f"snapshot has unexpected entries: {', '.join(unknown)}", FileFormatError)
    named = net.named_params()
    restored_history = []
    if started:
        for key, p in named:
            slot_arrays = []
            for s in range(slots):
                hkey = f"history/{s}/{key}"
                if hkey not in history:
                    fail(path, f"snapshot has no solver history '{hkey}'", FileFormatError)
                h = history.pop(hkey)
                if tuple(h.shape) != p.shape:
                    fail(path, f"solver history '{hkey}' has shape {_shape(h.shape)}, the "
                               f"param has {_shape(p.shape)}", ShapeError)
                slot_arrays.append(h)
            restored_history.append(slot_arrays)
        if history:
            fail(path, f"snapshot has history for params the net lacks: "
                       f"{', '.join(sorted(history))}", FileFormatError)
    try:
        data_state = from_json(meta.get("data_state"))
        rng_state = from_json(meta.get("rng_state") or {})
    except (TypeError, ValueError, AttributeError) as exc:
        fail(path, f"snapshot has a corrupted data or random state ({exc})", FileFormatError)
    if not isinstance(rng_state, dict):
        fail(path, f"snapshot random state must map layer names to states, got "
                   f"{type(rng_state).__name__}", FileFormatError)
    unknown_layers = [name for name in rng_state if name not in net._by_name]
    if unknown_layers:
        fail(path, f"snapshot has random state for layers the net lacks: "
                   f"{', '.join(unknown_layers)}", FileFormatError)

    # the data and random states are applied first, each all or nothing, and rolled back
    # if anything later fails: a bad snapshot leaves the solver as it was
    data = solver.data
    restore_data = data_state is not None and data is not None and hasattr(data, "set_state")
    if data_state is not None and not restore_data:
        warnings.warn(f"{path}: the snapshot holds a data iterator state but the solver "
                      f"has no data object with set_state(); batches will differ from "
                      f"the original run", stacklevel=3)
    old_data = data.get_state() if restore_data and hasattr(data, "get_state") else None
    old_rng = net.get_rng_state()
    try:
        if restore_data:
            try:
                data.set_state(data_state)
            except (ConvnetError, TypeError, ValueError, KeyError) as exc:
                fail(path, f"snapshot has a data iterator state this data object rejects "
                           f"({exc})", FileFormatError)
        try:
            net.set_rng_state(rng_state)
        except (ConvnetError, TypeError, ValueError, KeyError) as exc:
            fail(path, f"snapshot has an unusable random state ({exc})", FileFormatError)
        net.load_arrays(weights, path, strict=True)
    except BaseException:
        net.set_rng_state(old_rng)
        if old_data is not None:
            data.set_state(old_data)
        raise
    solver.set_history(restored_history if started else None)
    solver.iter = it
    changed = {k: (v, hyper[k]) for k, v in solver.hyper_params().items()
               if k in hyper and _differs(v, hyper[k])}
    if changed:
        listing = ", ".join(f"{k}={now!r} (snapshot: {then!r})"
                            for k, (now, then) in changed.items())
        warnings.warn(f"{path}: resuming with hyper-parameters that differ from the "
                      f"snapshot's: {listing}", stacklevel=3)
    return solver


def _setup_from_meta(net, input_shapes, path):
    """Set ``net`` up from a file's recorded input shapes; FileFormatError naming ``path``
    when they are not a {name: shape} dict of int lists."""
    if not isinstance(input_shapes, dict) or not all(
            isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                        for d in s) for s in input_shapes.values()):
        fail(path, f"has corrupted input_shapes metadata (expected {{name: [ints]}}, got "
                   f"{input_shapes!r:.80})", FileFormatError)
    net.setup(**input_shapes)


def _differs(a, b):
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a or []) != list(b or [])
    return a != b


def _shape(shape):
    return "x".join(str(int(d)) for d in shape)
