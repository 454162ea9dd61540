"""The polyphonic-music benchmarks (Boulanger-Lewandowski et al. 2012): files, names, downloads.

A data set has three splits, ``train``, ``valid`` and ``test``; each split is a list of
sequences, each sequence a float32 array of shape ``(T, 88)`` holding 0/1, ``T >= 1``.
Column ``k`` is MIDI pitch ``21 + k`` (A0 .. C8); a frame is the set of keys sounding at one
time step (a quarter note for JSB Chorales), an all-zero frame is a rest.

Two file formats are read, both as published for the four benchmarks:

* a pickled dict ``{'train', 'valid', 'test'}`` -> list of sequences -> list of frames ->
  tuple of MIDI pitches (``jsb_chorales.pickle``). It is read with a restricted unpickler that
  admits plain containers, numbers, strings and the two numpy globals such files use, and
  refuses any other global, so a malicious pickle cannot run code.
* a MATLAB v5 file (``JSB_Chorales.mat``, ``Nottingham.mat``, ...) with keys ``traindata``,
  ``validdata``, ``testdata``: 1 x N cell arrays of T x 88 0/1 matrices.

:func:`load_polyphonic` takes a path to one of those files, a named benchmark (downloaded and
checksummed on first use, see :mod:`grukit.data.download`) or ``"bach"``, the chorales shipped
inside music21 (see :mod:`grukit.tasks.music.bach`), which needs no network.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import numpy as np

from grukit.errors import DataError
from grukit.tasks.music.pianoroll import (
    NUM_KEYS,
    SPLITS,
    PianoRollDataset,
    _check_roll,
    frames_to_roll,
)

__all__ = [
    "DATASET_NAMES",
    "RestrictedUnpickler",
    "load_mat",
    "load_pickle",
    "load_polyphonic",
    "normalise_name",
]

MAT_KEYS: dict[str, str] = {"train": "traindata", "valid": "validdata", "test": "testdata"}
"""Split name -> variable name in the published .mat files."""

DATASET_NAMES: tuple[str, ...] = ("jsb", "nottingham", "musedata", "piano-midi", "bach")
"""Names :func:`load_polyphonic` accepts instead of a path."""

PICKLE_SUFFIXES = (".pickle", ".pkl")
MAT_SUFFIXES = (".mat",)

# --------------------------------------------------------------------------------------------
# restricted unpickling


def _numpy_scalar() -> Any:
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module).scalar
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy has no multiarray.scalar")  # pragma: no cover


# Python 2 and protocol < 4 pickles spell sets as a call of the builtin type.
_ALLOWED_BUILTINS = {"set": set, "frozenset": frozenset}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles from Python 3 use for bytes."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed as (str, 'latin1')")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for data files: plain containers, numbers, strings and numpy scalars only.

    The only globals admitted are ``numpy.core.multiarray.scalar`` (or its numpy 2 spelling
    ``numpy._core.multiarray.scalar``), ``numpy.dtype``, the builtins ``set`` and
    ``frozenset``, and ``_codecs.encode`` restricted to ``(str, 'latin1')`` (how protocol-2
    pickles written by Python 3 spell bytes, e.g. inside numpy scalars). Any other global
    (``os.system``, ``builtins.eval``, ...) raises DataError before it can be called. Python 2
    pickles are read with ``encoding='latin1'``, as numpy requires.
    """

    def __init__(self, file: Any, *, source: str = "pickle") -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if name == "scalar" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_scalar()
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module in ("builtins", "__builtin__") and name in _ALLOWED_BUILTINS:
            return _ALLOWED_BUILTINS[name]
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise DataError(
            f"refusing to load {module + '.' + name!r} from {self.source}: only plain "
            "containers, numbers and numpy scalars are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"refusing persistent id {pid!r} in {self.source}: not a plain data file")


MAX_PICKLE_BYTES = 512 << 20
"""A pickled data set may hold at most this many bytes."""
MIN_FRAME_LIMIT = 200_000
MIN_NOTE_LIMIT = 2_000_000
BYTES_PER_FRAME = 4
"""A pickle may expand to at most one frame per this many bytes (beyond the minimum limits):
real ones spend far more (JSB Chorales: ~89 bytes a frame, ~23 a note), but memo references
let a few bytes stand for a whole shared sequence or frame (a "pickle bomb")."""
BYTES_PER_NOTE = 1


def expansion_limits(nbytes: int) -> tuple[int, int]:
    """``(frames, notes)``: the most a pickle of ``nbytes`` bytes may expand to."""
    return (
        max(MIN_FRAME_LIMIT, nbytes // BYTES_PER_FRAME),
        max(MIN_NOTE_LIMIT, nbytes // BYTES_PER_NOTE),
    )


def _sized(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset))


def _check_expansion(obj: Any, nbytes: int, source: str) -> None:
    """Refuse an unpickled data set that would expand past :func:`expansion_limits` into piano
    rolls, counting lengths only (shared sequences are counted once per use, walked once)."""
    max_frames, max_notes = expansion_limits(nbytes)
    if not isinstance(obj, dict):
        return
    splits = [v for v in obj.values() if isinstance(v, (list, tuple))]
    frames = 0
    for seqs in splits:
        for seq in seqs:
            if isinstance(seq, (list, tuple)):
                frames += len(seq)
        if frames > max_frames:
            raise DataError(
                f"{source} expands to more than {max_frames} frames from {nbytes} bytes "
                "(a pickle bomb?); refusing to build its piano rolls"
            )
    notes_of: dict[int, int] = {}  # id(sequence) -> notes in it
    notes = 0
    for seqs in splits:
        for seq in seqs:
            if not isinstance(seq, (list, tuple)):
                continue
            key = id(seq)
            if key not in notes_of:
                notes_of[key] = sum(len(f) for f in seq if _sized(f))
            notes += notes_of[key]
            if notes > max_notes:
                raise DataError(
                    f"{source} expands to more than {max_notes} notes from {nbytes} bytes "
                    "(a pickle bomb?); refusing to build its piano rolls"
                )


def _read_pickle_bytes(path: Path) -> bytes:
    """The bytes of a pickle file: a regular file of at most :data:`MAX_PICKLE_BYTES`."""
    try:
        st = path.stat()
    except OSError:
        return _read_bytes(path)  # says what is wrong
    if stat.S_ISDIR(st.st_mode):
        return _read_bytes(path)
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is not a regular file (a FIFO or device?); expected a data file")
    if st.st_size > MAX_PICKLE_BYTES:
        raise DataError(
            f"{path} has {st.st_size} bytes, expected a pickle of at most {MAX_PICKLE_BYTES}"
        )
    data = _read_bytes(path)
    if len(data) > MAX_PICKLE_BYTES:
        raise DataError(f"{path} grew past {MAX_PICKLE_BYTES} bytes while being read")
    return data


def _unpickle(data: bytes, source: str) -> Any:
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except DataError:
        raise
    except EOFError as exc:
        raise DataError(f"{source} is truncated or corrupt (unexpected end of data)") from exc
    except Exception as exc:  # UnpicklingError, ValueError, TypeError, RuntimeError, ...
        raise DataError(f"{source} is truncated or corrupt ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------------
# file loaders


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"no such data file: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a data file") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_pickle(path: str | os.PathLike[str], *, name: str | None = None) -> PianoRollDataset:
    """Read a pickled ``{'train','valid','test'}`` -> sequences -> frames -> pitches dict.

    Uses :class:`RestrictedUnpickler`; the file may hold at most :data:`MAX_PICKLE_BYTES` and
    expand to at most :func:`expansion_limits` frames and notes; every pitch is checked
    (integer, 21..108), every sequence must have >= 1 frame. Raises DataError naming file,
    split, sequence and frame.
    """
    path = Path(path)
    data = _read_pickle_bytes(path)
    obj = _unpickle(data, path.name)
    _check_expansion(obj, len(data), path.name)  # before any piano roll is allocated
    if not isinstance(obj, dict):
        raise DataError(
            f"{path.name}: expected a dict with keys 'train', 'valid', 'test', "
            f"got {type(obj).__name__}"
        )
    keys = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    splits: dict[str, list[np.ndarray]] = {}
    for split in SPLITS:
        if split not in keys:
            found = ", ".join(repr(k) for k in keys) or "none"
            raise DataError(
                f"{path.name}: missing split {split!r} (expected keys 'train', 'valid', "
                f"'test'; found {found})"
            )
        seqs = keys[split]
        if not isinstance(seqs, (list, tuple)):
            raise DataError(
                f"{path.name}: split {split!r} must be a list of sequences, "
                f"got {type(seqs).__name__}"
            )
        if not seqs:
            raise DataError(f"{path.name}: split {split!r} holds no sequences")
        rolls = []
        for i, seq in enumerate(seqs):
            where = f"{path.name}: split {split!r}, sequence {i}"
            if not isinstance(seq, (list, tuple)):
                raise DataError(f"{where}: expected a list of frames, got {type(seq).__name__}")
            rolls.append(frames_to_roll(seq, where=where))
        splits[split] = rolls
    return PianoRollDataset(name=name or path.stem, splits=splits, source=str(path))


def load_mat(path: str | os.PathLike[str], *, name: str | None = None) -> PianoRollDataset:
    """Read a MATLAB v5 file with ``traindata``/``validdata``/``testdata`` cell arrays.

    Each cell is a T x 88 matrix of 0/1 over MIDI 21..108 (any numeric dtype). Raises
    DataError for a truncated/corrupt file, missing keys, a wrong shape or values other than 0/1.
    """
    import scipy.io  # lazy: scipy is slow to import

    path = Path(path)
    data = _read_bytes(path)
    try:
        mat = scipy.io.loadmat(io.BytesIO(data))
    except NotImplementedError as exc:  # v7.3 (HDF5) files
        raise DataError(
            f"{path.name}: unsupported MATLAB file version ({exc}); save it as v5 (-v7)"
        ) from exc
    except Exception as exc:  # scipy raises many types for damaged files
        raise DataError(
            f"{path.name} is truncated or corrupt (scipy.io.loadmat: {type(exc).__name__}: {exc})"
        ) from exc
    found = sorted(k for k in mat if not k.startswith("__"))
    splits: dict[str, list[np.ndarray]] = {}
    for split, key in MAT_KEYS.items():
        if key not in mat:
            raise DataError(
                f"{path.name}: missing variable {key!r} (split {split!r}); expected "
                f"'traindata', 'validdata', 'testdata', found {', '.join(found) or 'none'}"
            )
        cells = mat[key]
        if not (isinstance(cells, np.ndarray) and cells.dtype == object and 1 in cells.shape):
            shape = getattr(cells, "shape", None)
            raise DataError(
                f"{path.name}: {key!r} (split {split!r}) must be a 1 x N cell array of "
                f"T x {NUM_KEYS} matrices, got {getattr(cells, 'dtype', type(cells))} "
                f"array of shape {shape}"
            )
        cells = cells.reshape(-1)
        if cells.size == 0:
            raise DataError(f"{path.name}: split {split!r} ({key!r}) holds no sequences")
        splits[split] = [
            _check_roll(np.asarray(c), f"{path.name}: split {split!r}, sequence {i}")
            for i, c in enumerate(cells)
        ]
    return PianoRollDataset(name=name or path.stem, splits=splits, source=str(path))


# --------------------------------------------------------------------------------------------
# the front door


def normalise_name(spec: str) -> str:
    name = spec.strip().lower().replace("_", "-")
    aliases = {
        "jsb-chorales": "jsb",
        "jsbchorales": "jsb",
        "piano-midi.de": "piano-midi",
        "pianomidi": "piano-midi",
        "muse-data": "musedata",
    }
    return aliases.get(name, name)


def load_polyphonic(
    spec: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> PianoRollDataset:
    """Load a polyphonic-music data set as 88-key piano rolls.

    ``spec`` is a path to a ``.pickle``/``.pkl`` or ``.mat`` file, one of the named benchmarks
    ``jsb``, ``nottingham``, ``musedata``, ``piano-midi`` (downloaded once from its public
    URL, checked against its sha256 and kept in ``cache_dir``, default ``$GRUKIT_CACHE`` or
    ``~/.cache/grukit``), or ``bach``: the chorales shipped inside music21 (parsed once, then
    cached). ``progress`` shows tqdm bars for downloading/parsing.

    Raises DataError (DownloadError for network problems) with a message naming the problem.
    """
    names = ", ".join(DATASET_NAMES)
    if isinstance(spec, os.PathLike):
        return _load_path(Path(spec), names)
    if not isinstance(spec, str):
        raise DataError(f"expected a data set name ({names}) or a path, got {type(spec).__name__}")
    name = normalise_name(spec)
    if name == "bach":
        from grukit.tasks.music.bach import load_bach

        return load_bach(cache_dir=cache_dir, progress=progress)
    from grukit.data.download import REGISTRY, fetch

    if name in REGISTRY:
        entry = REGISTRY[name]
        local = fetch(name, cache_dir=cache_dir, progress=progress)
        dataset = _load_path(local, names, name=name)
        dataset.metadata["url"] = entry.url
        return dataset
    if os.sep in spec or "/" in spec or Path(spec).suffix or Path(spec).exists():
        return _load_path(Path(spec), names)
    raise DataError(
        f"unknown data set {spec!r}: expected one of {names}, or a path to a .pickle/.pkl/.mat file"
    )


def _load_path(path: Path, names: str, *, name: str | None = None) -> PianoRollDataset:
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(
            f"no such data file: {path} (pass a .pickle/.pkl/.mat file or one of the named "
            f"data sets: {names})"
        )
    if suffix in PICKLE_SUFFIXES:
        return load_pickle(path, name=name)
    if suffix in MAT_SUFFIXES:
        return load_mat(path, name=name)
    raise DataError(
        f"{path.name}: unsupported file type {suffix or '(no suffix)'!r}: expected .pickle, "
        f".pkl or .mat (or one of the named data sets: {names})"
    )
