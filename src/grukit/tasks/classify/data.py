"""Sequence-classification data: UEA/UCR ``.ts`` pairs, ``.npz`` arrays and named data sets.

Every loader returns a :class:`ClassificationData`: a train and a test :class:`SequenceSet` of
float32 ``(T_i, C)`` sequences with int64 class indices into ``classes``. Named sets
(:data:`CLASSIFICATION_DATASETS`): ``japanesevowels`` (read from the copy shipped inside the
``sktime`` or ``aeon`` wheel: offline), ``mnist-rows`` (28 steps of 28 pixels),
``mnist-pixels`` (784 steps of 1) and ``mnist-pixels-permuted`` (one fixed permutation of the
pixels, seed 0), downloaded once into the checked cache of :mod:`grukit.data.download`, or
read from a local copy of ``mnist.npz`` spelled ``mnist-pixels:PATH``.

Every problem with a file raises :class:`~grukit.errors.DataError` naming the file (and the
line or case) and saying what was expected and what came.
"""

from __future__ import annotations

import importlib.util
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grukit.errors import DataError

__all__ = [
    "CLASSIFICATION_DATASETS",
    "ClassificationData",
    "SequenceSet",
    "load_classification",
    "load_japanese_vowels",
    "load_mnist",
    "load_npz",
    "load_ts",
    "read_ts",
    "stratified_split",
]

CLASSIFICATION_DATASETS: tuple[str, ...] = (
    "japanesevowels",
    "mnist-rows",
    "mnist-pixels",
    "mnist-pixels-permuted",
)
"""The names :func:`load_classification` accepts (case-insensitive, ``-`` and ``_`` alike)."""

_FILE_TYPES = "a UEA/UCR folder, a NAME_TRAIN.ts / NAME_TEST.ts file, or an .npz file"


@dataclass
class SequenceSet:
    """Labelled multivariate sequences: x[i] float32 (T_i, C), T_i >= 1; y int64 (N,), class
    indices."""

    x: list[np.ndarray]
    y: np.ndarray

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        if self.y.ndim != 1 or len(self.x) != len(self.y):
            raise DataError(
                f"SequenceSet: expected one label per sequence, got {len(self.x)} sequences and "
                f"labels of shape {self.y.shape}"
            )

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: np.ndarray) -> SequenceSet:
        """The cases at ``index`` (int array, or a boolean mask of length N), in that order."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        return SequenceSet([self.x[i] for i in idx], self.y[idx])


@dataclass
class ClassificationData:
    """A classification problem: train and test sequences, class names (``y`` indexes them),
    where it came from (``source``) and free-form ``metadata``."""

    name: str
    classes: list[str]
    train: SequenceSet
    test: SequenceSet
    source: str
    metadata: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        """C, the number of features per time step (0 when there are no cases)."""
        for part in (self.train, self.test):
            if len(part):
                return int(part.x[0].shape[1])
        return 0


# ---------------------------------------------------------------------------------- .ts files


def _flag(value: str, where: str, tag: str) -> bool:
    word = value.strip().lower()
    if word in ("true", "false"):
        return word == "true"
    raise DataError(f"{where}: expected '@{tag} true' or '@{tag} false', got '@{tag} {value}'")


def _parse_dimension(text: str, where: str, d: int) -> np.ndarray:
    tokens = text.split(",")
    try:
        # '?' is the format's missing value; a token like '1?' still fails to parse below
        return np.array([t.strip().replace("?", "nan") for t in tokens], dtype=np.float64)
    except ValueError:
        pass
    for t, token in enumerate(tokens):
        try:
            float(token.strip().replace("?", "nan"))
        except ValueError:
            shown = token.strip()[:40] or "(empty)"
            raise DataError(
                f"{where}: dimension {d + 1}, value {t + 1}: expected a number or '?', "
                f"got {shown!r}"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def read_ts(
    path: str | os.PathLike[str], *, labelled: bool = True
) -> tuple[list[np.ndarray], list[str], dict[str, str]]:
    """Parse one UEA/UCR (sktime/aeon) ``.ts`` file: (sequences, labels, header).

    Sequences are float32 ``(T_i, C)`` arrays; labels are the class label of each case as
    written; header maps each ``@tag`` (lower-cased, without ``@``) to the rest of its line.

    Missing values (``?`` or NaN): in a file that is not ``@equalLength true``, the trailing
    time steps where *every* dimension is missing are padding and are stripped (all dimensions
    together). Any other missing value (interior, or in only some dimensions at the end, or any
    missing value in an equal-length file) is refused, as are infinite values. All dimensions
    of a case must have the same number of values (padding included).

    Also refused: ``@timeStamps true``, ``@classLabel false`` (unless ``labelled=False``:
    then unlabelled files give labels ``""``), a case whose number of dimensions differs from
    ``@dimensions`` or the first case, a label missing or not among ``@classLabel``'s labels,
    non-numeric values, no ``@data`` line, no cases.
    """
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from exc
    header: dict[str, str] = {}
    class_labels: list[str] | None = None
    has_labels = False
    dimensions: int | None = None
    equal_length = False
    series_length: int | None = None
    in_data = False
    xs: list[np.ndarray] = []
    labels: list[str] = []
    expected_dims: int | None = None
    dims_from = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name} line {number}"
        if not in_data:
            if not line.startswith("@"):
                raise DataError(
                    f"{where}: expected a header line starting with '@' (or '#' comment) "
                    f"before @data, got {line[:40]!r}"
                )
            tag, _, value = line[1:].partition(" ")
            tag = tag.lower()
            value = value.strip()
            if tag == "data":
                in_data = True
                if labelled and not has_labels:
                    raise DataError(
                        f"{where}: expected an '@classLabel true LABEL ...' header line before "
                        f"@data, got none (a classification file lists its class labels)"
                    )
                continue
            header[tag] = value
            if tag == "timestamps" and _flag(value, where, "timeStamps"):
                raise DataError(
                    f"{where}: time-stamped series (@timeStamps true) are not supported; "
                    f"expected @timeStamps false"
                )
            elif tag == "targetlabel" and _flag(value, where, "targetLabel"):
                raise DataError(
                    f"{where}: this is a regression file (@targetLabel true); expected a "
                    f"classification file with '@classLabel true LABEL ...'"
                )
            elif tag == "classlabel":
                flag, *rest = value.split() or [""]
                has_labels = _flag(flag, where, "classLabel")
                if not has_labels and labelled:
                    raise DataError(
                        f"{where}: '@classLabel false' marks a file without class labels "
                        f"(regression or unlabelled), expected '@classLabel true LABEL ...'"
                    )
                if has_labels and not rest:
                    raise DataError(
                        f"{where}: expected '@classLabel true' followed by the class labels, "
                        f"got no labels"
                    )
                if len(set(rest)) != len(rest):
                    raise DataError(f"{where}: @classLabel lists a label twice: {' '.join(rest)}")
                class_labels = rest if has_labels else None
            elif tag == "dimensions":
                try:
                    dimensions = int(value)
                except ValueError:
                    dimensions = -1
                if dimensions < 1:
                    raise DataError(f"{where}: expected '@dimensions N' with N >= 1, got {value!r}")
                expected_dims, dims_from = dimensions, "@dimensions"
            elif tag == "univariate" and _flag(value, where, "univariate") and dimensions is None:
                expected_dims, dims_from = 1, "@univariate true"
            elif tag == "equallength":
                equal_length = _flag(value, where, "equalLength")
            elif tag == "serieslength":
                try:
                    series_length = int(value)
                except ValueError:
                    raise DataError(
                        f"{where}: expected '@seriesLength N' with an integer N, got {value!r}"
                    ) from None
            continue
        # a case: dimensions separated by ':', values by ',', the class label last
        case = len(xs) + 1
        where = f"{name} line {number} (case {case})"
        parts = line.split(":")
        if has_labels:
            label = parts[-1].strip()
            dims = parts[:-1]
            if (
                len(parts) == 1
                or "," in label
                or (expected_dims is not None and len(parts) == expected_dims)
            ):
                raise DataError(
                    f"{where}: expected the class label after the last ':', got none "
                    f"(one of {' '.join(class_labels or [])})"
                )
            assert class_labels is not None
            if label not in class_labels:
                raise DataError(
                    f"{where}: expected a class label among @classLabel's "
                    f"{' '.join(class_labels)}, got {label[:40]!r}"
                )
        else:
            label, dims = "", parts
        if expected_dims is None:
            expected_dims, dims_from = len(dims), "the first case"
        if len(dims) != expected_dims:
            raise DataError(
                f"{where}: expected {expected_dims} dimensions (as in {dims_from}), got {len(dims)}"
            )
        values = [_parse_dimension(d, where, i) for i, d in enumerate(dims)]
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise DataError(
                f"{where}: expected all dimensions of a case to have the same number of values, "
                f"got lengths {', '.join(str(len(v)) for v in values)}"
            )
        series = np.stack(values, axis=1)  # (T, C)
        if np.isinf(series).any():
            raise DataError(f"{where}: expected finite values, got an infinite one")
        missing = np.isnan(series)
        if missing.any():
            if equal_length:
                t, c = np.argwhere(missing)[0]
                raise DataError(
                    f"{where}: dimension {c + 1}, value {t + 1} is missing in an @equalLength "
                    f"true file; expected no missing values"
                )
            valid = np.flatnonzero(~missing.all(axis=1))
            steps = int(valid[-1]) + 1 if valid.size else 0
            if steps == 0:
                raise DataError(f"{where}: expected at least one value, got only missing values")
            series = series[:steps]
            if np.isnan(series).any():
                t, c = np.argwhere(np.isnan(series))[0]
                raise DataError(
                    f"{where}: dimension {c + 1}, value {t + 1} is missing; expected missing "
                    f"values only as trailing padding of all dimensions together"
                )
        if equal_length and series_length is not None and len(series) != series_length:
            raise DataError(
                f"{where}: expected {series_length} values per dimension (@seriesLength), "
                f"got {len(series)}"
            )
        xs.append(series.astype(np.float32))
        labels.append(label)
    if not in_data:
        raise DataError(f"{name}: expected an @data line after the header, got none")
    if not xs:
        raise DataError(f"{name}: expected cases after @data, got none")
    return xs, labels, header


def _class_labels(header: dict[str, str]) -> list[str]:
    flag, *rest = header.get("classlabel", "").split() or [""]
    return rest if flag.lower() == "true" else []


def _ts_pair(path: Path) -> tuple[Path, Path]:
    """(train, test) file of the pair that ``path`` (folder or either file) names."""
    if path.is_dir():
        trains = sorted(p for p in path.iterdir() if p.name.lower().endswith("_train.ts"))
        if len(trains) != 1:
            got = ", ".join(p.name for p in trains) if trains else "none"
            raise DataError(
                f"{path}: expected exactly one NAME_TRAIN.ts file in the folder, got {got}"
            )
        path = trains[0]
    lower = path.name.lower()
    if lower.endswith("_train.ts"):
        own, other = "_train.ts", "_TEST.ts"
    elif lower.endswith("_test.ts"):
        own, other = "_test.ts", "_TRAIN.ts"
    else:
        raise DataError(
            f"{path.name}: expected a file named NAME_TRAIN.ts or NAME_TEST.ts (or a folder "
            f"holding such a pair)"
        )
    prefix = path.name[: -len(own)]
    wanted = (prefix + other).lower()
    partner = [p for p in path.parent.iterdir() if p.name.lower() == wanted]
    if not partner:
        raise DataError(
            f"{path.name}: expected its partner {prefix}{other} beside it in {path.parent}, "
            f"got none"
        )
    pair = (path, partner[0]) if own == "_train.ts" else (partner[0], path)
    return pair


def load_ts(path: str | os.PathLike[str]) -> ClassificationData:
    """A ``NAME_TRAIN.ts`` / ``NAME_TEST.ts`` pair, from the folder holding it or either file.

    Classes are the train file's ``@classLabel`` labels (the test file must list the same),
    ``y`` indexes them; the name is ``@problemName`` (else NAME). See :func:`read_ts` for the
    format and the missing-value rule.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    train_file, test_file = _ts_pair(path)
    x_train, l_train, h_train = read_ts(train_file)
    x_test, l_test, h_test = read_ts(test_file)
    classes = _class_labels(h_train)
    if _class_labels(h_test) != classes:
        raise DataError(
            f"{test_file.name}: expected the class labels of {train_file.name} "
            f"({' '.join(classes)}), got {' '.join(_class_labels(h_test))}"
        )
    c_train, c_test = x_train[0].shape[1], x_test[0].shape[1]
    if c_train != c_test:
        raise DataError(
            f"{test_file.name}: expected {c_train} dimensions as in {train_file.name}, got {c_test}"
        )
    index = {c: i for i, c in enumerate(classes)}
    name = h_train.get("problemname") or train_file.name[: -len("_train.ts")]
    return ClassificationData(
        name=name,
        classes=list(classes),
        train=SequenceSet(x_train, np.array([index[v] for v in l_train], dtype=np.int64)),
        test=SequenceSet(x_test, np.array([index[v] for v in l_test], dtype=np.int64)),
        source=str(path),
        metadata={"format": "ts", "train_file": str(train_file), "test_file": str(test_file)},
    )


# ---------------------------------------------------------------------------------- .npz files


def _open_npz(path: Path) -> Any:
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path.name}: expected an .npz archive written by numpy.savez, could not read it "
            f"({exc})"
        ) from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path.name}: expected an .npz archive of named arrays, got one array")
    return data


def _array(data: Any, path: Path, key: str) -> np.ndarray:
    try:
        return data[key]
    except ValueError as exc:  # "Object arrays cannot be loaded when allow_pickle=False"
        raise DataError(
            f"{path.name}: {key} is an object (pickled) array, which grukit never unpickles; "
            f"expected a numeric or string array"
        ) from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path.name}: {key} is corrupt or truncated ({exc})") from exc


def _npz_part(data: Any, path: Path, part: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(the cases, views into one float32 (N, T, C) array; the labels as read) of ``part``."""
    x = _array(data, path, f"x_{part}")
    y = _array(data, path, f"y_{part}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[1] < 1 or x.shape[2] < 1:
        raise DataError(
            f"{path.name}: expected x_{part} of shape (N, T) or (N, T, C) with T, C >= 1, "
            f"got {x.shape}"
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
        raise DataError(f"{path.name}: expected numeric x_{part}, got dtype {x.dtype}")
    n, steps = x.shape[0], x.shape[1]
    if n == 0:
        raise DataError(f"{path.name}: expected at least one case in x_{part}, got none")
    if y.ndim != 1 or len(y) != n:
        raise DataError(
            f"{path.name}: expected y_{part} of shape ({n},), one label per case of x_{part}, "
            f"got {y.shape}"
        )
    values = np.ascontiguousarray(x, dtype=np.float32)
    lengths = np.full(n, steps, dtype=np.int64)
    key = f"lengths_{part}"
    if key in data.files:
        raw = _array(data, path, key)
        if raw.shape != (n,) or not np.issubdtype(raw.dtype, np.integer):
            raise DataError(
                f"{path.name}: expected {key} of {n} integers, got shape {raw.shape} of dtype "
                f"{raw.dtype}"
            )
        bad = np.flatnonzero((raw < 1) | (raw > steps))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{path.name}: {key}[{i}] = {int(raw[i])}; expected a length in 1..{steps}"
            )
        lengths = raw.astype(np.int64)
    finite = np.isfinite(values)
    if not finite.all():
        # padding beyond a case's length may hold anything; only valid steps must be finite
        valid = np.arange(steps)[None, :] < lengths[:, None]
        bad_case = np.flatnonzero((~finite.all(axis=2) & valid).any(axis=1))
        if bad_case.size:
            raise DataError(
                f"{path.name}: x_{part} case {int(bad_case[0])} holds NaN or infinite values; "
                f"expected finite numbers"
            )
    xs = [values[i, : lengths[i]] for i in range(n)]
    return xs, y


def _label_kind(y: np.ndarray, path: Path, key: str) -> str:
    if np.issubdtype(y.dtype, np.integer):
        return "int"
    if y.dtype.kind in "US":
        return "str"
    raise DataError(f"{path.name}: expected integer or string labels in {key}, got {y.dtype}")


def _as_str(y: np.ndarray) -> np.ndarray:
    if y.dtype.kind == "S":
        return np.char.decode(y, "utf-8")
    return y.astype(str)


def load_npz(path: str | os.PathLike[str], *, name: str | None = None) -> ClassificationData:
    """Arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (optional ``lengths_train``,
    ``lengths_test``) from an ``.npz`` file.

    x is (N, T) (one channel) or (N, T, C), numeric and finite within each case's length;
    ``lengths_*`` (N,) integers in 1..T give each case's valid length (default T). Labels are
    integers or strings; classes are the sorted distinct labels of train and test (as strings,
    integers sorted numerically) and y indexes them. Never unpickles: object arrays are refused.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    with _open_npz(path) as data:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data.files]
        if missing:
            raise DataError(
                f"{path.name}: expected arrays x_train, y_train, x_test, y_test, missing "
                f"{', '.join(missing)} (it holds {', '.join(data.files) or 'nothing'})"
            )
        x_train, y_train = _npz_part(data, path, "train")
        x_test, y_test = _npz_part(data, path, "test")
    kinds = {_label_kind(y_train, path, "y_train"), _label_kind(y_test, path, "y_test")}
    if len(kinds) != 1:
        raise DataError(
            f"{path.name}: expected y_train and y_test of the same kind, got one of integers "
            f"and one of strings"
        )
    if kinds == {"int"}:
        distinct = np.union1d(y_train, y_test)
        classes = [str(int(v)) for v in distinct]
        code_train = np.searchsorted(distinct, y_train)
        code_test = np.searchsorted(distinct, y_test)
    else:
        s_train, s_test = _as_str(y_train), _as_str(y_test)
        distinct = np.union1d(s_train, s_test)
        classes = [str(v) for v in distinct]
        code_train = np.searchsorted(distinct, s_train)
        code_test = np.searchsorted(distinct, s_test)
    if x_train[0].shape[1] != x_test[0].shape[1]:
        raise DataError(
            f"{path.name}: expected x_test with the {x_train[0].shape[1]} channels of x_train, "
            f"got {x_test[0].shape[1]}"
        )
    return ClassificationData(
        name=name or path.stem,
        classes=classes,
        train=SequenceSet(x_train, code_train.astype(np.int64)),
        test=SequenceSet(x_test, code_test.astype(np.int64)),
        source=str(path),
        metadata={"format": "npz"},
    )


# ---------------------------------------------------------------------------------- named sets


def _package_dirs(package: str) -> list[Path]:
    """The folders of an installed package, found without importing (running) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def _shipped_japanese_vowels() -> tuple[Path | None, str, list[str]]:
    """(train file, package) of the first installed package shipping the pair, and the names
    of the packages found installed."""
    installed: list[str] = []
    for package in ("sktime", "aeon"):
        roots = _package_dirs(package)
        if roots:
            installed.append(package)
        for root in roots:
            folder = root / "datasets" / "data" / "JapaneseVowels"
            train = folder / "JapaneseVowels_TRAIN.ts"
            if train.is_file() and (folder / "JapaneseVowels_TEST.ts").is_file():
                return train, package, installed
    return None, "", installed


def load_japanese_vowels() -> ClassificationData:
    """Japanese Vowels (UCI / UEA): 9 speakers, 12 LPC cepstrum channels, 7-29 steps, 270 train
    / 370 test cases, read offline from the ``.ts`` pair shipped inside the installed ``sktime``
    (or ``aeon``) wheel, located without importing that package."""
    train, package, installed = _shipped_japanese_vowels()
    if train is None:
        if installed:
            raise DataError(
                f"the installed {' and '.join(installed)} holds no "
                f"datasets/data/JapaneseVowels/JapaneseVowels_TRAIN.ts and _TEST.ts; reinstall "
                f"it or pass --data PATH to a UEA JapaneseVowels folder"
            )
        raise DataError(
            "japanesevowels is read from the copy shipped with sktime, which is not installed: "
            "pip install sktime (or aeon), or pass --data PATH to a UEA JapaneseVowels folder"
        )
    data = load_ts(train)
    got = (len(data.train), len(data.test), data.channels, len(data.classes))
    if got != (270, 370, 12, 9):
        raise DataError(
            f"{data.source}: expected JapaneseVowels with 270 train / 370 test cases, 12 "
            f"channels and 9 classes, got {got[0]} / {got[1]}, {got[2]} and {got[3]}"
        )
    data.name = "JapaneseVowels"
    data.metadata["package"] = package
    return data


_MNIST_SHAPES = {
    "x_train": (60000, 28, 28),
    "y_train": (60000,),
    "x_test": (10000, 28, 28),
    "y_test": (10000,),
}


def load_mnist(
    view: str,
    *,
    path: str | os.PathLike[str] | None = None,
    permute_seed: int | None = None,
    progress: bool = False,
) -> ClassificationData:
    """MNIST as sequences of pixel/255 (float32): ``view="rows"`` gives 28 steps of 28
    features, ``"pixels"`` 784 steps of 1. ``permute_seed`` reorders the 784 pixel positions by
    one fixed permutation (``default_rng(seed).permutation(784)``: permuted pixel MNIST).

    ``path=None`` downloads the Keras ``mnist.npz`` once (sha256-checked, cached); a local
    ``path`` is read as is (any digest) but must hold ``x_train (60000, 28, 28) uint8``,
    ``y_train (60000,)``, ``x_test (10000, 28, 28)``, ``y_test (10000,)``. The sequences are views
    into one contiguous float32 array per split.
    """
    if view not in ("rows", "pixels"):
        raise DataError(f"MNIST view: expected 'rows' or 'pixels', got {view!r}")
    if path is None:
        from grukit.data.download import OTHER_DATASETS, fetch

        file = fetch("mnist", progress=progress)
        source = OTHER_DATASETS["mnist"].url
    else:
        file = Path(path)
        if not file.exists():
            raise DataError(f"no such file: {file}")
        source = str(file)
    arrays: dict[str, np.ndarray] = {}
    with _open_npz(file) as data:
        for key, shape in _MNIST_SHAPES.items():
            if key not in data.files:
                raise DataError(
                    f"{file.name}: expected MNIST arrays {', '.join(_MNIST_SHAPES)}, missing {key}"
                )
            arrays[key] = _array(data, file, key)
            dtype_ok = arrays[key].dtype == np.uint8 if key.startswith("x") else True
            if arrays[key].shape != shape or not dtype_ok:
                raise DataError(
                    f"{file.name}: expected {key} of shape {shape}"
                    f"{' and dtype uint8' if key.startswith('x') else ''}, got "
                    f"{arrays[key].shape} {arrays[key].dtype}"
                )
    perm = None
    if permute_seed is not None:
        perm = np.random.default_rng(permute_seed).permutation(784)
    shape = (28, 28) if view == "rows" else (784, 1)
    parts = {}
    for part in ("train", "test"):
        y = arrays[f"y_{part}"]
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
            raise DataError(f"{file.name}: expected y_{part} of integer digits 0..9")
        flat = arrays[f"x_{part}"].reshape(len(y), 784)
        if perm is not None:
            flat = flat[:, perm]
        values = flat.astype(np.float32)
        values /= np.float32(255.0)
        values = values.reshape(len(y), *shape)
        parts[part] = SequenceSet(list(values), y.astype(np.int64))
    name = f"mnist-{view}" + ("-permuted" if permute_seed is not None else "")
    return ClassificationData(
        name=name,
        classes=[str(d) for d in range(10)],
        train=parts["train"],
        test=parts["test"],
        source=source,
        metadata={"view": view, "permute_seed": permute_seed, "file": str(file)},
    )


def load_classification(
    spec: str | os.PathLike[str], *, progress: bool = False
) -> ClassificationData:
    """A named data set (:data:`CLASSIFICATION_DATASETS`; case-insensitive, ``-``/``_`` alike),
    or a path: a folder or ``.ts`` file (:func:`load_ts`) or an ``.npz`` file
    (:func:`load_npz`)."""
    names = ", ".join(CLASSIFICATION_DATASETS)
    if isinstance(spec, str):
        head, colon, local = spec.strip().partition(":")
        key = head.lower().replace("_", "-")
        views = {"mnist-rows": ("rows", None), "mnist-pixels": ("pixels", None),
                 "mnist-pixels-permuted": ("pixels", 0)}  # fmt: skip
        if key in ("japanesevowels", "japanese-vowels") and not colon:
            return load_japanese_vowels()
        if key in views:  # "mnist-pixels:PATH": the named view of a local copy of mnist.npz
            view, seed = views[key]
            path = Path(local).expanduser() if colon else None
            return load_mnist(view, path=path, permute_seed=seed, progress=progress)
    elif not isinstance(spec, os.PathLike):
        raise DataError(f"expected a data set name ({names}) or a path, got {type(spec).__name__}")
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir() or (path.is_file() and suffix == ".ts"):
        return load_ts(path)
    if path.is_file() and suffix == ".npz":
        return load_npz(path)
    if path.exists():
        raise DataError(
            f"{path.name}: unsupported file type {suffix or '(no suffix)'!r}: expected "
            f"{_FILE_TYPES}, or one of the named data sets: {names}"
        )
    text = str(spec)
    if isinstance(spec, os.PathLike) or os.sep in text or "/" in text or suffix:
        raise DataError(f"no such file or folder: {path} (expected {_FILE_TYPES})")
    raise DataError(
        f"unknown data set {text!r}: expected one of {names}, or a path to {_FILE_TYPES}"
    )


# ---------------------------------------------------------------------------------- splitting


def stratified_split(
    y: np.ndarray, valid_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, valid_idx): sorted int64 indices into y (N,), disjoint, covering 0..N-1.

    Per class of n cases, ``floor(valid_fraction * n + 0.5)`` cases (round half up) go to
    valid, at least 1 and at most n - 1 when n >= 2 (a class keeps a case on each side); a
    class with one case stays in train. The cases are drawn by ``np.random.default_rng(seed)``,
    class by class in increasing order, so the split is a function of (y, fraction, seed).
    """
    if (
        isinstance(valid_fraction, bool)
        or not isinstance(valid_fraction, (int, float, np.floating))
        or not 0.0 < float(valid_fraction) < 1.0
    ):
        raise DataError(f"valid_fraction: expected a number in (0, 1), got {valid_fraction!r}")
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise DataError(f"stratified_split: expected labels of shape (N,), got {labels.shape}")
    rng = np.random.default_rng(seed)
    valid: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members)
        if n < 2:
            continue
        k = min(max(math.floor(valid_fraction * n + 0.5), 1), n - 1)
        valid.append(rng.choice(members, size=k, replace=False))
    valid_idx = np.sort(np.concatenate(valid)) if valid else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[valid_idx] = False
    return np.flatnonzero(mask).astype(np.int64), valid_idx.astype(np.int64)
