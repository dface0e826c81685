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

from convnet.errors import ConfigError, ConvnetError, FileFormatError, fail
from convnet.shapes import MAX_ELEMENTS

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
    path = _fspath(path, "file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        fail(path, f"cannot write: the folder {directory} does not exist", FileFormatError)
    if os.path.isdir(path):
        fail(path, "cannot write: it is a directory", FileFormatError)
    try:
        # the temp name stays short: a legal 255-byte file name must still be writable
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path)[:64] + ".",
                                   suffix=".tmp", dir=directory)
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


def _fspath(path, what):
    try:
        path = os.fsdecode(os.fspath(path))      # bytes paths too, as str
    except (TypeError, UnicodeDecodeError):
        fail("convnet", f"the {what} path must be a str or os.PathLike, got {path!r:.60}",
             ConfigError)
    if "\0" in path:
        fail("convnet", f"the {what} path {path!r:.60} contains a NUL byte", ConfigError)
    return path


def read_npz(path, what="file"):
    """Read every array of an .npz eagerly (no pickle); FileFormatError naming ``path`` for
    a missing, empty, truncated, corrupted or crafted file, whatever its bytes: not a zip (an
    .npy renamed .npz), a member that is not an ``.npy`` array, a repeated member, an object
    (pickled) array, a header whose declared shape does not match the member's size (an
    array of 2**40 elements declared in a small file), a CRC error."""
    path = _fspath(path, what)
    if not os.path.exists(path):
        fail(path, f"{what} not found", FileFormatError)
    if os.path.isdir(path):
        fail(path, f"{what} is a directory, not an .npz file", FileFormatError)
    if os.path.getsize(path) == 0:
        fail(path, f"{what} is empty (0 bytes)", FileFormatError)
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_members(archive, path, what)
    except ConvnetError:
        raise
    except zipfile.BadZipFile as exc:
        fail(path, f"{what} is truncated or corrupted, not a readable .npz ({exc})",
             FileFormatError)
    except MemoryError:
        fail(path, f"{what} declares arrays too large to read into memory", FileFormatError)
    except Exception as exc:    # noqa: BLE001  (any other byte pattern: one error, the file's)
        fail(path, f"{what} is truncated or corrupted, not a readable .npz "
                   f"({type(exc).__name__}: {str(exc)[:200]})", FileFormatError)


def _read_members(archive, path, what):
    out = {}
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            fail(path, f"{what} has a member {name[:80]!r} that is not an .npy array (an "
                       f".npz holds only NAME.npy members)", FileFormatError)
        key = name[:-4]
        if key in out:
            fail(path, f"{what} has the member {name[:80]!r} twice", FileFormatError)
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                fail(path, f"{what} member {name[:80]!r} has .npy format version {version}",
                     FileFormatError)
            if dtype.hasobject:
                fail(path, f"{what} is truncated or corrupted (or crafted): member {name[:80]!r} "
                           f"holds Python objects, a pickle; refused unread, since loading it "
                           f"could run code", FileFormatError)
            count = 1
            for d in shape:
                count *= int(d)
            declared = count * dtype.itemsize
            if count > MAX_ELEMENTS:
                fail(path, f"{what} member {name[:80]!r} declares shape {_shape(shape)} "
                           f"({count:.3g} elements): more than any blob holds (2**40)",
                     FileFormatError)
            held = info.file_size - f.tell()
            if declared != held:
                fail(path, f"{what} member {name[:80]!r} declares shape "
                           f"{_shape(shape) or '()'} of {dtype} ({declared} bytes) but holds "
                           f"{held} bytes", FileFormatError)
        with archive.open(info) as f:
            out[key] = np.lib.format.read_array(f, allow_pickle=False)
    return out


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


#: the types a snapshot's recorded hyper-parameters may have (compared with the solver's to
#: warn about a changed setting; a value of another type is a corrupted file)
_HYPER_KINDS = {
    "base_lr": "number", "weight_decay": "number", "gamma": "number", "power": "number",
    "momentum": "number", "momentum2": "number", "delta": "number", "lr_policy": "str",
    "stepsize": "int or null", "max_iter": "int or null", "iter_size": "int",
    "stepvalues": "list of ints or null",
}
#: the largest iteration a snapshot may record (exact as a float, far past any run)
MAX_ITER = 2 ** 53


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _hyper_ok(kind, v):
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if kind == "int":
        return _is_int(v)
    if kind == "int or null":
        return v is None or _is_int(v)
    return v is None or (isinstance(v, list) and all(_is_int(x) for x in v))


def _check_meta(meta, path):
    """The snapshot's solver type, iteration, history slots, whether history exists, and its
    hyper-parameters; FileFormatError naming the field for anything missing or mistyped."""
    need = {"solver": str, "iter": int, "history_slots": int, "history_started": bool,
            "hyper": dict}
    for key, kind in need.items():
        if meta.get(key) is None:
            fail(path, f"snapshot metadata is incomplete (no {key!r})", FileFormatError)
        value = meta[key]
        ok = isinstance(value, bool) if kind is bool else (
            isinstance(value, kind) and not isinstance(value, bool))
        if key == "iter" and not (ok and 0 <= value <= MAX_ITER):
            fail(path, f"snapshot iteration must be an int >= 0, got {value!r:.40} (at "
                       f"most 2**53)", FileFormatError)
        if not ok:
            fail(path, f"snapshot metadata {key!r} must be a JSON {kind.__name__}, got "
                       f"{value!r:.60}", FileFormatError)
    it = meta["iter"]
    hyper = meta["hyper"]
    for key, kind in _HYPER_KINDS.items():
        if key in hyper and not _hyper_ok(kind, hyper[key]):
            fail(path, f"snapshot hyper-parameter {key!r} must be a {kind}, got "
                       f"{hyper[key]!r:.60}", FileFormatError)
    return meta["solver"], it, meta["history_slots"], meta["history_started"], hyper


def _check_history(net, history, slots, path):
    """Per learnable param, its history arrays (host, the param's dtype), every one checked:
    present, the param's shape, floats, finite."""
    restored = []
    for key, p in net.named_params():
        slot_arrays = []
        for s in range(slots):
            hkey = f"history/{s}/{key}"
            if hkey not in history:
                fail(path, f"snapshot has no solver history '{hkey}'", FileFormatError)
            h = history.pop(hkey)
            if tuple(h.shape) != p.shape:
                fail(path, f"solver history '{hkey}' has shape {_shape(h.shape)}, the "
                           f"param has {_shape(p.shape)}", FileFormatError)
            if h.dtype.kind != "f":
                fail(path, f"solver history '{hkey}' holds {h.dtype} values, expected floats",
                     FileFormatError)
            if not np.all(np.isfinite(h)):
                fail(path, f"solver history '{hkey}' holds non-finite values (NaN or Inf): "
                           f"the next step would make the weights non-finite",
                     FileFormatError)
            slot_arrays.append(np.ascontiguousarray(h, dtype=p.dtype))
        restored.append(slot_arrays)
    if history:
        fail(path, f"snapshot has history for params the net lacks: "
                   f"{', '.join(sorted(history))}", FileFormatError)
    return restored


def load_snapshot(solver, path):
    """Restore ``solver`` (and its net and data iterator) from ``path``, as a transaction:
    the whole file is parsed and checked first (solver type, format version, every name,
    shape, dtype and value), and on any failure the solver, the net (params, buffers, setup,
    random streams, filler stream) and the data iterator are left exactly as they were."""
    import warnings

    from convnet.net import META_KEY, _read_meta
    path = _fspath(path, "snapshot")
    arrays = read_npz(path, "snapshot")
    meta = _read_meta(arrays, path, SNAPSHOT_FORMAT, SNAPSHOT_VERSION)
    kind, it, slots, started, hyper = _check_meta(meta, path)
    if kind != type(solver).__name__:
        fail(path, f"snapshot was written by a {kind[:40]}, cannot restore it into a "
                   f"{type(solver).__name__}", FileFormatError)
    if slots != solver.history_slots:
        fail(path, f"snapshot has {slots} history slot(s) per param, a {kind} keeps "
                   f"{solver.history_slots}", FileFormatError)
    weights = {k[4:]: v for k, v in arrays.items() if k.startswith("net/")}
    history = {k: v for k, v in arrays.items() if k.startswith("history/")}
    unknown = [k for k in arrays if k != META_KEY and k not in history
               and not k.startswith("net/")]
    if unknown:
        fail(path, f"snapshot has unexpected entries: {', '.join(unknown)}", FileFormatError)
    try:
        data_state = from_json(meta.get("data_state"))
        rng_state = from_json(meta.get("rng_state") or {})
    except Exception as exc:     # noqa: BLE001  (crafted states: one error, the file's)
        fail(path, f"snapshot has a corrupted data or random state ({type(exc).__name__}: "
                   f"{str(exc)[:160]})", FileFormatError)
    net = solver.net
    if not isinstance(rng_state, dict):
        fail(path, f"snapshot random state must map layer names to states, got "
                   f"{type(rng_state).__name__}", FileFormatError)
    unknown_layers = [name for name in rng_state if name not in net._by_name]
    if unknown_layers:
        fail(path, f"snapshot has random state for layers the net lacks: "
                   f"{', '.join(map(str, unknown_layers))}", FileFormatError)
    data = solver.data
    restore_data = data_state is not None and data is not None and hasattr(data, "set_state")
    checkpoint = net._checkpoint()
    old_data = data.get_state() if restore_data and hasattr(data, "get_state") else None
    old_rng = net.get_rng_state()
    try:
        if any(lyr.bottom_shapes is None for lyr in net.layers) and meta.get("input_shapes"):
            _setup_from_meta(net, meta["input_shapes"], path)
        net._require_setup("restoring a snapshot")
        restored_history = _check_history(net, history, slots, path) if started else None
        _, apply_weights = net.check_arrays(weights, path, strict=True)
        if not started and history:
            fail(path, f"snapshot records no solver history but holds "
                       f"{', '.join(sorted(history))}", FileFormatError)
        changed = {k: (v, hyper[k]) for k, v in solver.hyper_params().items()
                   if k in hyper and _differs(v, hyper[k])}
        # everything checked: apply (the data and random states validate themselves, all or
        # nothing, and are rolled back with the rest if anything after them fails)
        if restore_data:
            try:
                data.set_state(data_state)
            except Exception as exc:     # noqa: BLE001
                fail(path, f"snapshot has a data iterator state this data object rejects "
                           f"({type(exc).__name__}: {str(exc)[:160]})", FileFormatError)
        try:
            net.set_rng_state(rng_state)
        except Exception as exc:     # noqa: BLE001
            fail(path, f"snapshot has an unusable random state ({type(exc).__name__}: "
                       f"{str(exc)[:160]})", FileFormatError)
        apply_weights()
        solver.set_history(restored_history)
        solver.iter = it
    except BaseException:
        net.set_rng_state(old_rng)
        if old_data is not None:
            data.set_state(old_data)
        net._rollback(checkpoint)
        raise
    if data_state is not None and not restore_data:
        warnings.warn(f"{path}: the snapshot holds a data iterator state but the solver "
                      f"has no data object with set_state(); batches will differ from "
                      f"the original run", stacklevel=3)
    if changed:
        listing = ", ".join(f"{k}={now!r} (snapshot: {then!r})"
                            for k, (now, then) in changed.items())
        warnings.warn(f"{path}: resuming with hyper-parameters that differ from the "
                      f"snapshot's: {listing}", stacklevel=3)
    return solver


def _setup_from_meta(net, input_shapes, path):
    """Set ``net`` up from a file's recorded input shapes; FileFormatError naming ``path``
    when they are not a {name: shape} dict of int lists or the net refuses them."""
    if not isinstance(input_shapes, dict) or not all(
            isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                        for d in s) for s in input_shapes.values()):
        fail(path, f"has corrupted input_shapes metadata (expected {{name: [ints]}}, got "
                   f"{input_shapes!r:.80})", FileFormatError)
    try:
        net.setup(**input_shapes)
    except ConvnetError as exc:
        fail(path, f"has input_shapes metadata {input_shapes!r:.80} that net '{net.name}' "
                   f"cannot be set up with ({exc})", FileFormatError)


def _differs(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) != list(b)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return True
    return a != b


def _shape(shape):
    return "x".join(str(int(d)) for d in shape)
