"""Atomic checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder (for example ``run/checkpoints/last``) holding:

* ``model.safetensors``: ``model.state_dict()``;
* ``optimizer.safetensors`` + ``optimizer.json``: the tensors of ``optimizer.state_dict()``
  under stable names (``state.0.exp_avg``) and the rest of its structure as JSON;
* ``scheduler.json`` (+ ``scheduler.safetensors`` if its state holds tensors);
* ``rng.safetensors`` (torch CPU generator state) + ``rng.json`` (``random`` and numpy's
  global RNG);
* ``meta.json``: the caller's ``meta`` plus ``format``, ``format_version``, ``saved_at``,
  ``library_versions`` and ``files`` (size and sha256 of every other file).

JSON files use a small tagged encoding so that values plain JSON cannot hold come back
exactly: ``{"__float__": "inf"}`` (also ``-inf``, ``nan``), ``{"__tuple__": [...]}``,
``{"__dict__": [[key, value], ...]}`` for dicts with non-string keys,
``{"__ndarray__": {...}}`` and ``{"__tensor__": "name"}`` (a tensor in the sibling
safetensors file). Nothing is ever unpickled, so loading an untrusted checkpoint cannot run
code.

Crash safety: every file is written into a fresh sibling folder ``<name>.tmp-XXXXXXXX`` and
fsynced, ``meta.json`` last; then the previous checkpoint is renamed to
``<name>.old-XXXXXXXX``, the new folder is renamed to ``<name>``, the parent folder is fsynced
and the old one deleted. A kill at any moment therefore leaves ``<name>`` either absent or a
complete checkpoint (old or new). If it is absent, ``load_checkpoint`` and ``read_meta`` fall
back, with a warning, to the newest sibling whose ``meta.json`` is complete (that sibling's
files were fsynced before its ``meta.json`` was written); the next successful save removes
the leftovers. One process at a time may save to a given path.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from grukit.errors import CheckpointError
from grukit.io import (
    _fsync_dir,
    _write_new_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_regular_file,
    safe_child,
)

__all__ = [
    "FORMAT_VERSION",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_checkpoint",
    "read_meta",
    "save_checkpoint",
    "validate_trainer_meta",
]

FORMAT = "grukit-checkpoint"
FORMAT_VERSION = 1
META_FILE = "meta.json"
_RESERVED_META_KEYS = ("format", "format_version", "saved_at", "library_versions", "files")
_TAGS = ("__float__", "__tuple__", "__dict__", "__ndarray__", "__tensor__")


# -- exact JSON encoding with tensors split out ---------------------------------------------


def _where(path: tuple[object, ...]) -> str:
    return "".join(f"[{p!r}]" for p in path) or "the top level"


class _Encoder:
    """Turns a state structure into JSON-ready data, collecting tensors under stable names."""

    def __init__(self, what: str, *, allow_tensors: bool = True) -> None:
        self.what = what
        self.allow_tensors = allow_tensors
        self.tensors: dict[str, torch.Tensor] = {}

    def _tensor_name(self, path: tuple[object, ...]) -> str:
        base = ".".join(str(p) for p in path) or "tensor"
        name, n = base, 1
        while name in self.tensors:
            n += 1
            name = f"{base}#{n}"
        return name

    def encode(self, value: Any, path: tuple[object, ...] = ()) -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            return {"__float__": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, torch.Tensor):
            if not self.allow_tensors:
                raise TypeError(
                    f"{self.what}: cannot store a tensor at {_where(path)} "
                    "(use .item() or .tolist())"
                )
            name = self._tensor_name(path)
            self.tensors[name] = value.detach()
            return {"__tensor__": name}
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise TypeError(
                    f"{self.what}: cannot store a {value.dtype} array at {_where(path)}"
                )
            items = [self.encode(v, path) for v in value.ravel().tolist()]
            return {
                "__ndarray__": {"dtype": value.dtype.str, "shape": list(value.shape), "data": items}
            }
        if isinstance(value, np.generic):
            return self.encode(value.item(), path)
        if isinstance(value, list):
            return [self.encode(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, (*path, i)) for i, v in enumerate(value)]}
        if isinstance(value, Mapping):
            plain = all(isinstance(k, str) for k in value) and not (
                len(value) == 1 and next(iter(value)) in _TAGS
            )
            if plain:
                return {k: self.encode(v, (*path, k)) for k, v in value.items()}
            pairs = []
            for k, v in value.items():
                if not (k is None or isinstance(k, bool | int | float | str | tuple)):
                    raise TypeError(
                        f"{self.what}: cannot store a dict key of type {type(k).__name__} "
                        f"at {_where(path)}"
                    )
                pairs.append([self.encode(k, path), self.encode(v, (*path, k))])
            return {"__dict__": pairs}
        raise TypeError(
            f"{self.what}: cannot store a value of type {type(value).__name__} at {_where(path)}"
            " (supported: None, bool, int, float, str, list, tuple, dict, tensors, numpy arrays)"
        )


def _decode(value: Any, tensors: Mapping[str, torch.Tensor], file: str) -> Any:
    """Invert ``_Encoder.encode``; raises CheckpointError naming ``file`` on malformed data."""
    if isinstance(value, list):
        return [_decode(v, tensors, file) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, body),) = value.items()
        try:
            if tag == "__float__":
                if body not in ("nan", "inf", "-inf"):
                    raise ValueError(f"bad float {body!r}")
                return float(body)
            if tag == "__tuple__":
                return tuple(_decode(v, tensors, file) for v in body)
            if tag == "__dict__":
                return {_decode(k, tensors, file): _decode(v, tensors, file) for k, v in body}
            if tag == "__ndarray__":
                data = [_decode(v, tensors, file) for v in body["data"]]
                return np.array(data, dtype=np.dtype(body["dtype"])).reshape(body["shape"])
            if tag == "__tensor__":
                if body not in tensors:
                    raise ValueError(f"tensor {body!r} is not in the safetensors file")
                return tensors[body]
        except CheckpointError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{file}: malformed {tag} entry: {exc}") from None
    return {k: _decode(v, tensors, file) for k, v in value.items()}


def _to_json_bytes(data: Any) -> bytes:
    return (json.dumps(data, indent=1, allow_nan=False, ensure_ascii=False) + "\n").encode()


def _tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise tensors to safetensors bytes (CPU, contiguous; shared storage is copied)."""
    seen: set[int] = set()
    ready: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        t = tensor.detach()
        if t.layout != torch.strided:
            raise TypeError(f"cannot store {name!r}: only dense tensors are supported")
        t = t.to("cpu").contiguous()
        if t.numel():
            pointer = t.untyped_storage().data_ptr()
            if pointer in seen:  # tied weights: safetensors refuses shared storage
                t = t.clone()
            else:
                seen.add(pointer)
        ready[name] = t
    return safetensors.torch.save(ready)


# -- reading --------------------------------------------------------------------------------

MAX_META_BYTES = 64 << 20
"""``meta.json`` may hold at most this many bytes."""
MAX_JSON_DEPTH = 100
"""JSON files of a checkpoint may nest arrays and objects at most this deep."""

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_depth(data: bytes) -> int:
    """The deepest nesting of arrays/objects in JSON text ``data`` (brackets inside strings do
    not count); cheap, so that it can run before the recursive parser."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", data))
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _parse_json(folder: Path, name: str, data: bytes) -> Any:
    depth = _json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(
            f"{folder / name}: JSON nested {depth} levels deep, expected at most {MAX_JSON_DEPTH}"
        )
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{folder / name}: not UTF-8 text (corrupt file)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{folder / name}: invalid JSON (truncated or corrupt?): {exc.msg} "
            f"at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise CheckpointError(
            f"{folder / name}: JSON nested too deeply, expected at most {MAX_JSON_DEPTH} levels"
        ) from None


def _parse_tensors(folder: Path, name: str, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError and friends: report, never a raw traceback
        raise CheckpointError(f"{folder / name}: not a valid safetensors file: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_meta_file(folder: Path) -> dict[str, Any]:
    name = META_FILE
    data = read_regular_file(safe_child(folder, name), max_bytes=MAX_META_BYTES)
    try:
        meta = _decode(_parse_json(folder, name, data), {}, name)
    except RecursionError:
        raise CheckpointError(f"{folder / name}: nested too deeply") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / name}: not a grukit checkpoint description")
    version = meta.get("format_version")
    if not _is_int(version):
        raise CheckpointError(f"{folder / name}: format_version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: checkpoint format {version} is newer than this grukit supports "
            f"({FORMAT_VERSION}); upgrade grukit"
        )
    files = meta.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict)
        and isinstance(v.get("sha256"), str)
        and _is_int(v.get("size"))
        and v["size"] >= 0
        for v in files.values()
    ):
        raise CheckpointError(f"{folder / name}: the 'files' table is missing or malformed")
    for file in files:
        if not isinstance(file, str) or Path(file).name != file or file in (META_FILE, ".", ".."):
            raise CheckpointError(f"{folder / name}: bad file name {file!r} in the 'files' table")
    return meta


def _siblings(path: Path) -> list[Path]:
    """Folders ``<path>.tmp-XXXXXXXX`` / ``<path>.old-XXXXXXXX`` made by ``save_checkpoint``
    (real folders only: a symlink is never followed)."""
    pattern = glob.escape(str(path))
    token = "[0-9a-f]" * 8
    found = glob.glob(f"{pattern}.tmp-{token}") + glob.glob(f"{pattern}.old-{token}")
    return sorted(
        Path(p) for p in found if not Path(p).is_symlink() and Path(p).is_dir()
    )  # fmt: skip


def _resolve(path: str | os.PathLike[str]) -> Path:
    """The folder to read for checkpoint ``path``, recovering from an interrupted save."""
    path = safe_child(Path(path).parent, Path(path).name)  # refuses a symlinked folder
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: not a folder (a checkpoint is a folder)")
    complete: list[tuple[str, int, Path]] = []
    incomplete: list[Path] = []
    for sibling in _siblings(path):
        try:
            meta = _read_meta_file(sibling)
        except CheckpointError:
            incomplete.append(sibling)
            continue
        newer_first = 1 if ".tmp-" in sibling.name[len(path.name) :] else 0
        complete.append((str(meta.get("saved_at", "")), newer_first, sibling))
    if complete:
        chosen = max(complete)[2]
        warnings.warn(
            f"checkpoint {path} is missing (a save was interrupted); using the complete copy "
            f"{chosen.name}",
            RuntimeWarning,
            stacklevel=3,
        )
        return chosen
    if incomplete:
        names = ", ".join(p.name for p in incomplete)
        raise CheckpointError(
            f"{path}: no checkpoint; only incomplete folders left by an interrupted save: {names}"
        )
    raise CheckpointError(f"{path}: no checkpoint found")


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``meta.json`` of checkpoint folder ``path`` (cheap: no file is verified)."""
    return _read_meta_file(_resolve(path))


def validate_trainer_meta(meta: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Check ``meta["trainer"]`` (what a resume continues from) and return a copy of it.

    Expected: ``epoch`` int >= 0, ``best_valid`` a number (may be +-inf, not NaN),
    ``best_epoch`` int in [0, epoch], ``since_best`` int >= 0; other keys are kept as they are.
    Raises CheckpointError naming ``source`` and the first bad value.
    """
    trainer = meta.get("trainer") if isinstance(meta, Mapping) else None
    if not isinstance(trainer, Mapping):
        got = "nothing" if trainer is None else type(trainer).__name__
        raise CheckpointError(f"{source}: expected a 'trainer' table, got {got}")
    state = dict(trainer)
    for key in ("epoch", "best_valid", "best_epoch", "since_best"):
        if key not in state:
            raise CheckpointError(f"{source}: trainer.{key} is missing")
    for key in ("epoch", "best_epoch", "since_best"):
        value = state[key]
        if not _is_int(value) or value < 0:
            raise CheckpointError(f"{source}: trainer.{key} must be an integer >= 0, got {value!r}")
    best = state["best_valid"]
    if not isinstance(best, int | float) or isinstance(best, bool) or math.isnan(best):
        raise CheckpointError(
            f"{source}: trainer.best_valid must be a number (or +-inf), got {best!r}"
        )
    state["best_valid"] = float(best)
    if state["best_epoch"] > state["epoch"]:
        raise CheckpointError(
            f"{source}: trainer.best_epoch must be at most trainer.epoch ({state['epoch']}), "
            f"got {state['best_epoch']}"
        )
    return state


# -- saving ---------------------------------------------------------------------------------


def _library_versions() -> dict[str, str]:
    from grukit import __version__

    return {
        "grukit": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _rng_state() -> dict[str, Any]:
    return {
        "torch_cpu": torch.get_rng_state(),
        "python_random": random.getstate(),
        "numpy_global": np.random.get_state(legacy=False),
    }


def _state_files(name: str, state: Any) -> dict[str, bytes]:
    encoder = _Encoder(f"{name} state")
    structure = encoder.encode(state)
    files = {f"{name}.json": _to_json_bytes(structure)}
    if encoder.tensors:
        files[f"{name}.safetensors"] = _tensors_to_bytes(encoder.tensors)
    return files


def _check_replaceable(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a checkpoint folder; not replacing it")
    if any(path.iterdir()) and not (path / META_FILE).is_file():
        raise CheckpointError(
            f"{path}: exists and is not a grukit checkpoint (no {META_FILE}); not replacing it"
        )


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    meta: Mapping[str, Any] | None = None,
    rng: bool = True,
    progress: Any = None,
) -> None:
    """Write a checkpoint folder at ``path``, replacing any previous one atomically.

    ``meta`` (config, epoch, metrics, ...) must hold JSON-like data; it is stored in
    ``meta.json`` with the reserved keys ``format``, ``format_version``, ``saved_at``,
    ``library_versions`` and ``files`` added. ``rng=True`` also stores the torch CPU,
    ``random`` and numpy global RNG states (needed for an exact ``--resume``). ``progress``
    (tensors, numbers, lists, dicts) is what a task carries from one training batch to the next
    (the character LM's hidden state and place in the text), in ``progress.{json,safetensors}``.
    """
    path = Path(path)
    meta = dict(meta or {})
    clash = [k for k in _RESERVED_META_KEYS if k in meta]
    if clash:
        raise ValueError(f"meta may not use the reserved key(s): {', '.join(clash)}")

    # Serialise everything in memory first: a bad value fails before the disk is touched.
    files: dict[str, bytes] = {"model.safetensors": _tensors_to_bytes(model.state_dict())}
    if optimizer is not None:
        files.update(_state_files("optimizer", optimizer.state_dict()))
    if scheduler is not None:
        files.update(_state_files("scheduler", scheduler.state_dict()))
    if rng:
        files.update(_state_files("rng", _rng_state()))
    if progress is not None:
        files.update(_state_files("progress", progress))
    full_meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds"),
        "library_versions": _library_versions(),
        "files": {n: {"size": len(d), "sha256": _sha256(d)} for n, d in files.items()},
        **meta,
    }
    files[META_FILE] = _to_json_bytes(_Encoder("meta", allow_tensors=False).encode(full_meta))

    path.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(path)
    token = secrets.token_hex(4)
    tmp = path.with_name(f"{path.name}.tmp-{token}")
    old = path.with_name(f"{path.name}.old-{token}")
    tmp.mkdir()
    try:
        for name, data in files.items():  # meta.json last: its presence marks completeness
            _write_new_file(tmp / name, data)
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    had_old = path.exists()
    try:
        if had_old:
            os.rename(path, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, path)
    except BaseException:
        # Put the previous checkpoint back. If even that fails, both complete folders stay
        # and loading falls back to the newer one.
        restored = not had_old
        if had_old:
            with contextlib.suppress(OSError):
                os.rename(old, path)
                restored = True
        if restored:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    for leftover in _siblings(path):  # the old copy, and any left by interrupted saves
        shutil.rmtree(leftover, ignore_errors=True)


# -- loading --------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _check_model_keys(
    folder: Path, saved: Mapping[str, torch.Tensor], model: torch.nn.Module
) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = sorted(k for k in saved if k not in expected)  # the file's order varies
    mismatched = [
        k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(
            "missing from the checkpoint: "
            + ", ".join(f"{k} {_shape(expected[k])}" for k in missing)
        )
    if unexpected:
        parts.append(
            "not in the model: " + ", ".join(f"{k} {_shape(saved[k])}" for k in unexpected)
        )
    if mismatched:
        parts.append(
            "shape mismatch: "
            + ", ".join(
                f"{k} checkpoint {_shape(saved[k])} vs model {_shape(expected[k])}"
                for k in mismatched
            )
        )
    raise CheckpointError(
        f"{folder / 'model.safetensors'} does not fit the model ({'; '.join(parts)})"
    )


def _load_state(folder: Path, name: str, contents: Mapping[str, bytes]) -> Any:
    json_name, st_name = f"{name}.json", f"{name}.safetensors"
    if json_name not in contents:
        raise CheckpointError(f"{folder}: the checkpoint holds no {name} state ({json_name})")
    tensors = _parse_tensors(folder, st_name, contents[st_name]) if st_name in contents else {}
    return _decode(_parse_json(folder, json_name, contents[json_name]), tensors, json_name)


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch_state = state["torch_cpu"]
    if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8):
        raise TypeError("torch_cpu is not a uint8 tensor")
    torch.set_rng_state(torch_state.cpu())
    random.setstate(state["python_random"])
    np.random.set_state(state["numpy_global"])


def _restore_rng(folder: Path, state: Any) -> None:
    previous = _rng_state()
    try:
        if not isinstance(state, dict):
            raise TypeError("not a table")
        _set_rng_state(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        _set_rng_state(previous)  # all or nothing
        raise CheckpointError(f"{folder / 'rng.json'}: cannot restore RNG state: {exc}") from None


def _kind_of(value: Any) -> str:
    """The type class a saved state value must keep: numbers are interchangeable."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "dict"
    if isinstance(value, torch.Tensor):
        return "tensor"
    return type(value).__name__


def _same_kind(saved: Any, live: Any) -> bool:
    """Whether ``saved`` may replace ``live`` (None on either side is accepted)."""
    a, b = _kind_of(saved), _kind_of(live)
    if a == "None" or b == "None" or a == b:
        return True
    return {a, b} == {"number", "tensor"} and (
        isinstance(saved, torch.Tensor)
        and saved.numel() == 1
        or isinstance(live, torch.Tensor)
        and live.numel() == 1
    )


def _check_optimizer_state(file: Path, state: Any, optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer state that does not have the live optimizer's structure."""
    live = optimizer.state_dict()

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{file}: does not fit the optimizer: {what}")

    if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
        got = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise bad(f"expected a table with exactly 'state' and 'param_groups', got {got}")
    groups, live_groups = state["param_groups"], live["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(live_groups):
        got = len(groups) if isinstance(groups, list) else type(groups).__name__
        raise bad(f"expected {len(live_groups)} parameter group(s), got {got}")
    for i, (group, live_group) in enumerate(zip(groups, live_groups, strict=True)):
        if not isinstance(group, dict) or set(group) != set(live_group):
            got = sorted(map(str, group)) if isinstance(group, dict) else type(group).__name__
            raise bad(f"param_groups[{i}] should have keys {sorted(live_group)}, got {got}")
        if list(group["params"]) != list(live_group["params"]):
            raise bad(f"param_groups[{i}] lists other parameters than the optimizer's")
        for key, value in group.items():
            if not _same_kind(value, live_group[key]):
                raise bad(
                    f"param_groups[{i}][{key!r}] should be {_kind_of(live_group[key])}, "
                    f"got {_kind_of(value)}"
                )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    per_param = state["state"]
    if not isinstance(per_param, dict):
        raise bad(f"'state' should be a table, got {type(per_param).__name__}")
    for pid, entry in per_param.items():
        if not _is_int(pid) or not 0 <= pid < len(params):
            raise bad(f"'state' key {pid!r} is not a parameter id in [0, {len(params) - 1}]")
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise bad(f"state[{pid}] should be a table of named values")
        for key, value in entry.items():
            kind = _kind_of(value)
            if kind not in ("tensor", "number", "bool", "None"):
                raise bad(f"state[{pid}][{key!r}] should be a tensor or a number, got {kind}")
            shape = tuple(params[pid].shape)
            if kind == "tensor" and value.dim() > 0 and tuple(value.shape) != shape:
                raise bad(
                    f"state[{pid}][{key!r}] has shape {list(value.shape)}, "
                    f"the parameter {list(shape)}"
                )


def _check_scheduler_state(file: Path, state: Any, scheduler: Any) -> None:
    """Refuse a scheduler state that sets a key the live scheduler's state lacks or changes a
    value's type (``load_state_dict`` would set any attribute it is given)."""
    live = scheduler.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{file}: does not fit the scheduler: expected a table, got {type(state).__name__}"
        )
    for key, value in state.items():
        if key not in live:
            raise CheckpointError(
                f"{file}: does not fit the scheduler: {key!r} is not part of a "
                f"{type(scheduler).__name__} state"
            )
        if not _same_kind(value, live[key]):
            raise CheckpointError(
                f"{file}: does not fit the scheduler: {key!r} should be {_kind_of(live[key])}, "
                f"got {_kind_of(value)}"
            )
        if isinstance(value, list | tuple) and isinstance(live[key], list | tuple):
            kinds = {_kind_of(v) for v in live[key]}
            for item in value:
                if len(kinds) == 1 and not _same_kind(item, live[key][0]):
                    raise CheckpointError(
                        f"{file}: does not fit the scheduler: {key!r} should hold "
                        f"{next(iter(kinds))} values, got {_kind_of(item)}"
                    )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = False,
    map_location: str | torch.device = "cpu",
    restore_progress: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Verify checkpoint ``path`` and load it into the objects given; return its meta.

    Every file listed in ``meta.json`` is checked (size and sha256) before anything is
    modified. The model must match exactly (names and shapes). ``restore_rng`` restores the
    torch CPU, ``random`` and numpy global RNG states; ``restore_progress`` is called with the
    decoded ``progress`` state (None when the checkpoint holds none) after the rest loaded.
    Raises CheckpointError naming the file and the problem for anything missing, truncated,
    corrupt or incompatible.
    """
    folder = _resolve(path)
    meta = _read_meta_file(folder)
    contents: dict[str, bytes] = {}
    for name, info in meta["files"].items():
        size = info["size"]  # compared with the file's before anything is read
        data = read_regular_file(safe_child(folder, name), max_bytes=size, expected_size=size)
        if _sha256(data) != info["sha256"]:
            raise CheckpointError(f"{folder / name}: corrupt (sha256 does not match meta.json)")
        contents[name] = data

    # Decode everything that is needed before touching any object.
    model_state = None
    if model is not None:
        if "model.safetensors" not in contents:
            raise CheckpointError(f"{folder}: model.safetensors is not listed in meta.json")
        model_state = _parse_tensors(folder, "model.safetensors", contents["model.safetensors"])
        _check_model_keys(folder, model_state, model)
    opt_state = _load_state(folder, "optimizer", contents) if optimizer is not None else None
    sched_state = _load_state(folder, "scheduler", contents) if scheduler is not None else None
    rng_state = _load_state(folder, "rng", contents) if restore_rng else None
    progress = None
    if restore_progress is not None and "progress.json" in contents:
        progress = _load_state(folder, "progress", contents)
    if optimizer is not None:
        _check_optimizer_state(folder / "optimizer.json", opt_state, optimizer)
    if scheduler is not None:
        _check_scheduler_state(folder / "scheduler.json", sched_state, scheduler)

    if model_state is not None:
        device = torch.device(map_location)
        if device.type != "cpu":
            model_state = {k: v.to(device) for k, v in model_state.items()}
        try:
            model.load_state_dict(model_state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{folder / 'model.safetensors'}: {exc}") from None
    if optimizer is not None:
        try:
            optimizer.load_state_dict(opt_state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{folder / 'optimizer.json'}: does not fit the optimizer: {exc}"
            ) from None
    if scheduler is not None:
        try:
            scheduler.load_state_dict(sched_state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                f"{folder / 'scheduler.json'}: does not fit the scheduler: {exc}"
            ) from None
    if restore_rng:
        _restore_rng(folder, rng_state)
    if restore_progress is not None:
        try:
            restore_progress(progress)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{folder / 'progress.json'}: cannot restore it: {exc}") from None
    return meta
