"""Careful file access for run folders and checkpoints.

* ``atomic_write_bytes`` / ``atomic_write_text`` / ``atomic_write_json``: replace a file so that
  readers and crashes see the old or the new content, never a mix.
* :func:`read_regular_file`: read a file that must be a regular file (never a symlink, FIFO or
  device), of a known or bounded size, checked before reading; it never blocks or reads
  without bound.
* :func:`read_data_file`: a data file a user named (text or bytes), with one-sentence errors
  for a missing, irregular, too large or not-UTF-8 file;
* :func:`safe_child`: a path inside a folder with no symlinked component, so that nothing is
  read from or written to outside that folder by way of a link.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from grukit.errors import CheckpointError, DataError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_regular_file",
    "safe_child",
]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


# -- atomic files ---------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    """Make a rename or file creation in ``folder`` durable (a no-op where unsupported)."""
    if os.name == "nt":  # Windows cannot open folders; NTFS journals the rename
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on folders
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist), write ``data``, flush and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: readers and crashes see the old or the new
    content, never a mix (temp file in the same folder, fsync, ``os.replace``, fsync folder)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        _write_new_file(tmp, bytes(data))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8, newlines untranslated) atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically (plain ``json``: NaN is written as
    ``NaN``; checkpoints use their own exact encoding instead)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


# -- careful reading ------------------------------------------------------------------------


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a plain file"


def _size(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


def read_regular_file(
    path: str | os.PathLike[str], *, max_bytes: int, expected_size: int | None = None
) -> bytes:
    """Return the bytes of ``path``, which must be a regular file (not a symlink, FIFO or
    device) of at most ``max_bytes`` bytes, and of exactly ``expected_size`` when given.

    The sizes are compared before anything is read and at most ``max_bytes + 1`` bytes are
    read, so a FIFO never blocks and ``/dev/zero`` is never read. Raises CheckpointError.
    """
    path = Path(path)
    flags = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_BINARY | _O_CLOEXEC
    if not _O_NOFOLLOW and path.is_symlink():  # platforms without O_NOFOLLOW
        raise CheckpointError(f"{path} is not a regular file (it is a symbolic link)")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EMLINK and path.is_symlink()):
            raise CheckpointError(f"{path} is not a regular file (it is a symbolic link)") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO/socket without a writer, a folder
            with contextlib.suppress(OSError):
                raise CheckpointError(
                    f"{path} is not a regular file (it is {_kind(path.lstat().st_mode)})"
                ) from None
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path} is not a regular file (it is {_kind(st.st_mode)})")
        if expected_size is not None and st.st_size != expected_size:
            raise CheckpointError(
                f"{path}: truncated or corrupt ({_size(st.st_size)}, expected {expected_size})"
            )
        if st.st_size > max_bytes:
            raise CheckpointError(
                f"{path} has {_size(st.st_size)}, expected at most {_size(max_bytes)}"
            )
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise CheckpointError(
            f"{path} grew while being read: expected at most {_size(max_bytes)}, got more"
        )
    if expected_size is not None and len(data) != expected_size:
        raise CheckpointError(
            f"{path} changed while being read: expected {_size(expected_size)}, "
            f"got {_size(len(data))}"
        )
    return data


def safe_child(root: str | os.PathLike[str], *parts: str | os.PathLike[str]) -> Path:
    """``root / parts`` checked to stay inside ``root``: no component below ``root`` may be a
    symbolic link, ``..`` or absolute (components need not exist). Raises CheckpointError."""
    root = Path(root)
    path = root
    for part in parts:
        rel = Path(part)
        if rel.is_absolute() or rel.drive:
            raise CheckpointError(f"{rel} is an absolute path; expected a name inside {root}")
        for name in rel.parts:
            if name in ("", ".", ".."):
                raise CheckpointError(f"{root / rel}: expected a path inside {root}, got {name!r}")
            path = path / name
            if path.is_symlink():
                raise CheckpointError(
                    f"{path} is a symbolic link; grukit reads and writes only real files and "
                    f"folders inside {root}"
                )
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot resolve {path}: {exc}") from None
    if not inside:
        raise CheckpointError(f"{path} resolves outside {root}; expected a path inside it")
    return path


def read_data_file(
    path: str | os.PathLike[str],
    *,
    expected: str,
    max_bytes: int,
    text: bool = True,
    hint: str = "",
) -> str | bytes:
    """The contents of data file ``path``: a ``str`` (strict UTF-8) or, with ``text=False``, the
    bytes. A missing file, a folder, a file over ``max_bytes`` or bytes that are not UTF-8 are a
    DataError naming the file, ``expected`` (what it should be), and for bad bytes their value,
    byte offset and line, then ``hint``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file (expected {expected})")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file (expected {expected})")
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path}: {size} bytes; at most {max_bytes} are read")
    data = path.read_bytes()
    if not text:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
            f"(line {line}; {exc.reason}){hint}"
        ) from None
