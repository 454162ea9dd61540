"""A run folder is grukit's own: a marker written first, a lock held for the whole run.

``grukit train --out RUN`` claims ``RUN`` with :func:`claim`: a new or empty folder gets the
marker file ``.grukit-run`` before anything else is written; a folder holding files grukit
did not write is refused and left exactly as it was. :class:`RunLock` (``fcntl.flock`` on
``.grukit-lock``) keeps a second grukit process out of a folder in use; the OS releases it
when the process ends, however it ends.

``metrics.jsonl`` holds one JSON object per finished epoch. :func:`read_metrics` drops only a
last line cut short by a kill and the epochs finished after the last checkpoint; any other bad
line is an error, never silently discarded.

Folders made by the previous grukit version have no marker; one whose entries all carry
grukit's names and that holds a complete ``checkpoints/last`` is taken as a run (the marker is
added when it is resumed).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import shutil
import stat
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from grukit.errors import CheckpointError
from grukit.io import (
    _fsync_dir,
    atomic_write_json,
    atomic_write_text,
    read_regular_file,
    safe_child,
)

try:  # POSIX only; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK",
    "MARKER",
    "METRICS",
    "RunFolderError",
    "RunLock",
    "append_metrics",
    "check_fresh",
    "check_readable",
    "check_resumable",
    "claim",
    "is_run_folder",
    "read_metrics",
    "restore_metrics",
    "write_metrics",
]

MARKER = ".grukit-run"
LOCK = ".grukit-lock"
METRICS = "metrics.jsonl"
MARKER_FORMAT = "grukit-run"
MARKER_VERSION = 1
MAX_MARKER_BYTES = 64 << 10
MAX_METRICS_BYTES = 256 << 20
"""``metrics.jsonl`` may hold at most this many bytes (about a million epochs)."""

KNOWN_NAMES = frozenset(
    {
        "config.toml",
        METRICS,
        "checkpoints",
        "final.json",
        "curves.png",
        "samples",
        "confusion.png",
        "forecast.png",
        "predictions.csv",
        "forecast.csv",
    }
)
"""Entries grukit writes at the top of a run folder (besides its ``.grukit-*`` files)."""
RESULT_NAMES = (
    "final.json", "curves.png", "samples", "confusion.png", "forecast.png", "predictions.csv",
    "forecast.csv",
)  # fmt: skip
_ATOMIC_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{8}$")  # left by atomic_write_*
_CKPT_TMP = re.compile(r"^(?:last|best)\.(?:tmp|old)-[0-9a-f]{8}$")  # left by save_checkpoint
_CKPT_NAMES = ("last", "best")


class RunFolderError(CheckpointError):
    """A run folder is missing, foreign, in use by another process or holds bad files."""


# -- what a folder holds --------------------------------------------------------------------


def _is_control(name: str) -> bool:
    """grukit's marker and lock (and temporaries of them)."""
    m = _ATOMIC_TMP.match(name)
    return name.startswith(".grukit-") or bool(m and m["name"].startswith(".grukit-"))


def _is_ours(name: str) -> bool:
    m = _ATOMIC_TMP.match(name)
    return name in KNOWN_NAMES or _is_control(name) or bool(m and m["name"] in KNOWN_NAMES)


def _entries(run: Path) -> list[str]:
    try:
        return sorted(os.listdir(run))
    except OSError as exc:
        raise RunFolderError(f"cannot list {run}: {exc.strerror or exc}") from None


def _check_real_folder(run: Path, what: str = "run folder") -> None:
    if run.is_symlink():
        raise RunFolderError(f"{run} is a symbolic link; expected a real folder as the {what}")
    if not run.is_dir():
        raise RunFolderError(f"{run} is a file, not a folder; expected a folder as the {what}")


def _marker(run: Path) -> bool:
    """Whether ``run`` holds a valid marker (an invalid one is an error)."""
    path = run / MARKER
    if not os.path.lexists(path):
        return False
    data = read_regular_file(path, max_bytes=MAX_MARKER_BYTES)
    try:
        marker = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        marker = None
    version = marker.get("version") if isinstance(marker, dict) else None
    if not (
        isinstance(marker, dict)
        and marker.get("format") == MARKER_FORMAT
        and isinstance(version, int)
        and not isinstance(version, bool)
    ):
        raise RunFolderError(
            f"{path} is not a grukit run marker (expected JSON with format {MARKER_FORMAT!r})"
        )
    if version > MARKER_VERSION:
        raise RunFolderError(
            f"{run} was made by a newer grukit (run folder version {version}, this grukit "
            f"reads {MARKER_VERSION}); upgrade grukit"
        )
    return True


def _write_marker(run: Path) -> None:
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    atomic_write_json(
        run / MARKER, {"format": MARKER_FORMAT, "version": MARKER_VERSION, "created": created}
    )


def _checkpoints_folder(run: Path) -> Path | None:
    folder = run / "checkpoints"
    if not os.path.lexists(folder):
        return None
    _check_real_folder(folder, "checkpoints folder")
    return folder


def _checkpoint(run: Path, which: str) -> tuple[str, dict[str, Any] | str | None]:
    """``("complete", meta)``, ``("absent", None)`` (nothing, or only incomplete temporaries
    of an interrupted save) or ``("broken", message)`` for ``run/checkpoints/which``."""
    from grukit.checkpoint import read_meta

    folder = _checkpoints_folder(run)
    if folder is None:
        return "absent", None
    path = folder / which
    if path.is_symlink():
        raise RunFolderError(f"{path} is a symbolic link; expected a real checkpoint folder")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the fallback to a complete copy
            return "complete", read_meta(path)
    except CheckpointError as exc:
        if os.path.lexists(path):
            return "broken", str(exc)
        return "absent", None


def _temporaries(run: Path) -> list[Path]:
    """grukit's own leftovers of interrupted writes: checkpoint ``*.tmp-*``/``*.old-*``
    folders and ``.NAME.tmp-*`` files of atomic writes (never symlinks)."""
    found = [run / n for n in _entries(run) if _ATOMIC_TMP.match(n) and _is_ours(n)]
    folder = _checkpoints_folder(run)
    if folder is not None:
        found += [folder / n for n in _entries(folder) if _CKPT_TMP.match(n)]
    return [p for p in found if not p.is_symlink()]


def _legacy(run: Path, names: list[str]) -> bool:
    """A folder of the previous grukit version: grukit's names only and a complete last."""
    return (
        all(_is_ours(n) for n in names)
        and "checkpoints" in names
        and _checkpoint(run, "last")[0] == "complete"
    )


def _foreign(run: Path, names: list[str]) -> RunFolderError:
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return RunFolderError(
        f"{run} holds files grukit did not write (e.g. {shown}); choose an empty or new --out"
    )


def _holds_run(run: Path) -> RunFolderError:
    return RunFolderError(
        f"{run} already holds a run; continue it with `grukit train --resume {run}` or "
        "choose another --out"
    )


def _metrics_epochs(run: Path) -> list[int]:
    """Epoch numbers of the complete, valid lines of ``metrics.jsonl`` (lenient)."""
    path = safe_child(run, METRICS)
    if not os.path.lexists(path):
        return []
    data = read_regular_file(path, max_bytes=MAX_METRICS_BYTES)
    epochs = []
    for line in data.split(b"\n")[:-1]:
        with contextlib.suppress(ValueError, RecursionError):
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                epochs.append(row["epoch"])
    return epochs


# -- claiming -------------------------------------------------------------------------------


def _fresh(run: Path, *, apply: bool) -> None:
    if not os.path.lexists(run):
        if apply:
            try:
                run.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunFolderError(f"cannot create {run}: {exc.strerror or exc}") from None
            _write_marker(run)
        return
    _check_real_folder(run)
    names = _entries(run)
    if all(_is_control(n) for n in names) and not _marker(run):  # empty (but for our lock)
        if apply:
            for tmp in _temporaries(run):
                tmp.unlink()
            _write_marker(run)
        return
    if not _marker(run):
        if _legacy(run, names):
            raise _holds_run(run)
        raise _foreign(run, [n for n in names if not _is_ours(n)] or names)
    # the marker is there: a run of ours, maybe killed before its first complete checkpoint
    last, last_info = _checkpoint(run, "last")
    if last == "complete":
        raise _holds_run(run)
    if last == "broken":
        raise RunFolderError(f"{last_info}; choose another --out (grukit will not remove it)")
    foreign = [n for n in names if not _is_ours(n)]
    if foreign:
        raise _foreign(run, foreign)
    results = [n for n in RESULT_NAMES if n in names]
    best, best_meta = _checkpoint(run, "best")
    best_epoch = best_meta.get("epoch") if isinstance(best_meta, dict) else None
    late = [e for e in _metrics_epochs(run) if e > 1]
    if (
        results
        or late
        or best == "broken"
        or (best == "complete" and not (isinstance(best_epoch, int) and best_epoch <= 1))
    ):
        raise RunFolderError(
            f"{run} holds a run with no complete checkpoints/last to continue from; choose "
            "another --out (grukit will not remove its results)"
        )
    folder = _checkpoints_folder(run)
    extra = [
        n for n in (_entries(folder) if folder else []) if not _CKPT_TMP.match(n) and n != "best"
    ]
    if extra:
        raise _foreign(folder, extra)
    if not apply:
        return
    # only what a kill during the first epoch leaves behind: remove it, nothing else
    for path in _temporaries(run):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if best == "complete":
        shutil.rmtree(folder / "best")
    for name in (METRICS, "config.toml"):
        path = run / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    _fsync_dir(run)


def _resumable(run: Path, *, apply: bool) -> None:
    if not os.path.lexists(run):
        raise RunFolderError(f"{run} does not exist; expected a run folder made by `grukit train`")
    _check_real_folder(run)
    names = _entries(run)
    marked = _marker(run)
    if not marked and not _legacy(run, names):
        raise RunFolderError(
            f"{run} is not a grukit run folder (no {MARKER} marker and no complete "
            "checkpoints/last)"
        )
    last, info = _checkpoint(run, "last")
    if last == "broken":
        raise RunFolderError(str(info))
    if last == "absent":
        leftovers = ", ".join(p.name for p in _temporaries(run)) or "none"
        try:
            _fresh(run, apply=False)
        except RunFolderError:  # results or later epochs exist: a fresh start may not wipe them
            raise RunFolderError(
                f"{run} has no complete checkpoints/last to resume (incomplete saves left: "
                f"{leftovers}) and holds results a fresh start would replace; copy out what "
                "you need and train into another --out"
            ) from None
        raise RunFolderError(
            f"{run} has no complete checkpoint to resume (it was stopped during its first "
            f"epoch); start it afresh with `grukit train --out {run}` and the same settings"
        )
    if apply and not marked:
        _write_marker(run)


def claim(run: str | os.PathLike[str], *, resume: bool) -> None:
    """Make ``run`` this process's run folder (call it under :class:`RunLock`).

    A fresh claim accepts a missing or empty folder (writing the marker first) or a marked
    folder left by a kill before the first complete checkpoint (removing only grukit's own
    leftovers); it refuses a folder with files grukit did not write, or that holds a run.
    A resume claim needs a marked (or legacy) folder with a complete ``checkpoints/last``.
    Raises RunFolderError with one sentence naming the folder.
    """
    (_resumable if resume else _fresh)(Path(run), apply=True)


def check_fresh(run: str | os.PathLike[str]) -> None:
    """Raise what ``claim(run, resume=False)`` (or :class:`RunLock`, for a folder in use by
    another process) would, changing nothing."""
    run = Path(run)
    if run.is_dir() and not run.is_symlink():
        _check_not_in_use(run)
    _fresh(run, apply=False)


def check_resumable(run: str | os.PathLike[str]) -> None:
    """Raise what ``claim(run, resume=True)`` (or :class:`RunLock`, for a folder in use by
    another process) would, changing nothing."""
    run = Path(run)
    if run.is_dir() and not run.is_symlink():
        _check_not_in_use(run)
    _resumable(run, apply=False)


def check_readable(run: str | os.PathLike[str]) -> None:
    """Check that ``run`` is a run folder to read from (``grukit eval`` / ``sample``): a
    folder with the marker or a real ``checkpoints/`` folder."""
    run = Path(run)
    if not os.path.lexists(run):
        raise RunFolderError(f"{run} does not exist; expected a run folder made by `grukit train`")
    if not run.is_dir():
        raise RunFolderError(f"{run} is a file, not a folder; expected a run folder")
    if _checkpoints_folder(run) is None and not _marker(run):
        raise RunFolderError(
            f"{run} is not a grukit run folder (no {MARKER} marker and no checkpoints/)"
        )


def is_run_folder(run: str | os.PathLike[str]) -> bool:
    """Whether ``run`` is a real folder holding a valid marker or a legacy run."""
    run = Path(run)
    try:
        if run.is_symlink() or not run.is_dir():
            return False
        return _marker(run) or _legacy(run, _entries(run))
    except CheckpointError:
        return False


# -- the lock -------------------------------------------------------------------------------


def _in_use(run: Path, fd: int) -> RunFolderError:
    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    pid = f"PID {holder}" if holder.isdigit() else "PID unknown"
    return RunFolderError(
        f"{run} is in use by another grukit process ({pid}); wait for it or choose another --out"
    )


def _check_not_in_use(run: Path) -> None:
    """Raise RunFolderError naming the holder's PID when another process holds ``run``'s
    lock (probing only: the lock file is neither created nor changed)."""
    path = run / LOCK
    if fcntl is None or path.is_symlink() or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # RunLock reports what is wrong with the lock file
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _in_use(run, fd) from None
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on run folder ``run`` (``fcntl.flock`` on ``run/.grukit-lock``).

    ``create`` makes ``run`` (and its parents) when missing; a folder holding files grukit did
    not write gets no lock file. Held by another process: RunFolderError naming its PID.
    Released by :meth:`release`, on leaving the ``with`` block, or by the OS when the process
    dies. Without ``fcntl`` (Windows) nothing is locked.
    """

    def __init__(self, run: str | os.PathLike[str], *, create: bool = True) -> None:
        self.run = Path(run)
        self.create = create
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock now or raise RunFolderError (never waits)."""
        if self._fd is not None:
            return self
        run = self.run
        if not os.path.lexists(run):
            if not self.create:
                raise RunFolderError(
                    f"{run} does not exist; expected a run folder made by `grukit train`"
                )
            try:
                run.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunFolderError(f"cannot create {run}: {exc.strerror or exc}") from None
        _check_real_folder(run)
        if fcntl is None:  # pragma: no cover - Windows
            return self
        path = run / LOCK
        if not os.path.lexists(path):
            names = _entries(run)
            if not _marker(run) and not _legacy(run, names):
                foreign = [n for n in names if not _is_control(n)]
                if foreign:  # leave a foreign folder exactly as it was
                    raise _foreign(run, [n for n in foreign if not _is_ours(n)] or foreign)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunFolderError(
                    f"{path} is a symbolic link; expected grukit's lock file"
                ) from None
            raise RunFolderError(f"cannot open {path}: {exc.strerror or exc}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RunFolderError(f"{path} is not a regular file; expected grukit's lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunFolderError(f"cannot lock {path}: {exc.strerror or exc}") from None
                raise _in_use(run, fd) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock back (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


# -- metrics --------------------------------------------------------------------------------


def read_metrics(run: str | os.PathLike[str], *, epochs: int) -> list[dict[str, Any]]:
    """The rows of ``run/metrics.jsonl`` for epochs ``1..epochs`` (the last checkpoint's).

    A missing file gives ``[]``. Only the final line may be cut short (not JSON, as a kill
    leaves it): it is dropped; so are rows of epochs after ``epochs``. Any other bad line,
    or kept rows that are not epochs 1..epochs in order, raise RunFolderError naming the file.
    """
    run = Path(run)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise RunFolderError(f"{run}: expected a number of epochs >= 0, got {epochs!r}")
    path = safe_child(run, METRICS)
    if not os.path.lexists(path):
        return []
    data = read_regular_file(path, max_bytes=MAX_METRICS_BYTES)
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # the file ends with a newline
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            if number == len(lines):  # the final line, cut short by a kill
                break
            raise RunFolderError(
                f"{path}: line {number} is not valid JSON (expected one JSON object per epoch)"
            ) from None
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise RunFolderError(
                f"{path}: line {number} should be a JSON object with an integer 'epoch', "
                f"got {line[:60].decode('utf-8', 'replace')!r}"
            )
        if epoch <= epochs:
            if epoch != len(rows) + 1:
                raise RunFolderError(
                    f"{path}: line {number} holds epoch {epoch}, expected epoch {len(rows) + 1} "
                    f"(the rows must be epochs 1..{epochs} in order)"
                )
            rows.append(row)
    if len(rows) != epochs:
        raise RunFolderError(
            f"{path} holds {len(rows)} epoch(s) up to the checkpoint, expected epochs 1..{epochs}"
        )
    return rows


def _is_row(line: bytes) -> bool:
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(row, dict) and isinstance(row.get("epoch"), int)


def _metrics_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def write_metrics(run: str | os.PathLike[str], rows: list[dict[str, Any]]) -> None:
    """Replace ``run/metrics.jsonl`` with ``rows`` atomically."""
    atomic_write_text(safe_child(Path(run), METRICS), _metrics_text(rows))


def restore_metrics(run: str | os.PathLike[str], *, epochs: int) -> list[dict[str, Any]]:
    """:func:`read_metrics`, then rewrite the file with the rows kept when anything was dropped
    (a line cut short, epochs past the checkpoint), so that appending continues cleanly."""
    rows = read_metrics(run, epochs=epochs)
    path = safe_child(Path(run), METRICS)
    if os.path.lexists(path):
        size = os.lstat(path).st_size
        if size != len(_metrics_text(rows).encode()):
            write_metrics(run, rows)
    return rows


def append_metrics(run: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append ``row`` as one line to ``run/metrics.jsonl``, flushed and fsynced. A final line
    cut short by a kill (no newline, not JSON) is removed first, as :func:`read_metrics` drops
    it, so that the new row starts its own line."""
    path = safe_child(Path(run), METRICS)
    line = (json.dumps(row) + "\n").encode("utf-8")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise RunFolderError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunFolderError(f"{path} is not a regular file; expected grukit's metrics file")
        size = st.st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            if size > MAX_METRICS_BYTES:
                raise RunFolderError(
                    f"{path} has {size} bytes, expected at most {MAX_METRICS_BYTES}"
                )
            data = os.pread(fd, size, 0)
            start = data.rfind(b"\n") + 1
            if _is_row(data[start:]):  # complete but for its newline
                line = b"\n" + line
            else:  # cut short by a kill: read_metrics drops it too
                size = start
                os.ftruncate(fd, size)
        view = memoryview(line)
        while view:
            written = os.pwrite(fd, view, size)
            size += written
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        _fsync_dir(path.parent)
