"""Classification data: the ``.ts`` parser and its refusals, ``.ts`` pairs, ``.npz`` files,
stratified splits, the named sets (JapaneseVowels from the sktime wheel, MNIST) and downloads."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from grukit.data import download
from grukit.errors import DataError, DownloadError
from grukit.tasks.classify import data as cdata
from grukit.tasks.classify.data import (
    CLASSIFICATION_DATASETS,
    ClassificationData,
    SequenceSet,
    load_classification,
    load_japanese_vowels,
    load_mnist,
    load_npz,
    load_ts,
    read_ts,
    stratified_split,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

HEADER = [
    "# a comment",
    "@problemName Toy",
    "@timeStamps false",
    "@missing false",
    "@univariate false",
    "@dimensions 2",
    "@equalLength false",
    "@classLabel true a b c",
    "@data",
]


def write(path: Path, header: list[str], cases: list[str]) -> Path:
    path.write_text("\n".join([*header, *cases]) + "\n")
    return path


def replace(header: list[str], prefix: str, line: str | None) -> list[str]:
    """``header`` with the line starting with ``prefix`` replaced (or dropped when None)."""
    out = []
    for h in header:
        if h.startswith(prefix):
            if line is not None:
                out.append(line)
        else:
            out.append(h)
    return out


# ------------------------------------------------------------------------------ read_ts


def test_read_ts_multivariate_variable_length(tmp_path: Path) -> None:
    path = write(
        tmp_path / "Toy_TRAIN.ts", HEADER, ["1,2,3:4,5,6:b", "", "7.5:-8E-1:a", "0,1:2,3:c"]
    )
    xs, labels, header = read_ts(path)
    assert labels == ["b", "a", "c"]
    assert [x.shape for x in xs] == [(3, 2), (1, 2), (2, 2)]
    assert all(x.dtype == np.float32 for x in xs)
    np.testing.assert_array_equal(xs[0], np.array([[1, 4], [2, 5], [3, 6]], np.float32))
    np.testing.assert_allclose(xs[1], [[7.5, -0.8]])
    assert header["problemname"] == "Toy" and header["classlabel"] == "true a b c"


def test_read_ts_strips_trailing_padding_of_all_dimensions(tmp_path: Path) -> None:
    cases = ["1,2,?,?:3,4,?,?:a", "1,2,3,NaN:4,5,6,nan:b", "1,2,3:4,5,6:c"]
    xs, labels, _ = read_ts(write(tmp_path / "p.ts", HEADER, cases))
    assert [x.shape for x in xs] == [(2, 2), (3, 2), (3, 2)]
    np.testing.assert_array_equal(xs[0], [[1, 3], [2, 4]])
    assert not any(np.isnan(x).any() for x in xs)
    assert labels == ["a", "b", "c"]


def test_read_ts_univariate_without_dimensions_line(tmp_path: Path) -> None:
    header = replace(replace(HEADER, "@dimensions", None), "@univariate", "@univariate true")
    xs, labels, _ = read_ts(write(tmp_path / "u.ts", header, ["1,2,3:a", "4:b"]))
    assert [x.shape for x in xs] == [(3, 1), (1, 1)] and labels == ["a", "b"]


def test_read_ts_unlabelled_only_when_asked(tmp_path: Path) -> None:
    header = replace(HEADER, "@classLabel", "@classLabel false")
    path = write(tmp_path / "n.ts", header, ["1,2:3,4", "5:6"])
    with pytest.raises(DataError, match=r"n\.ts line 8: '@classLabel false'"):
        read_ts(path)
    xs, labels, _ = read_ts(path, labelled=False)
    assert [x.shape for x in xs] == [(2, 2), (1, 2)] and labels == ["", ""]


BAD_CASES = [
    # (what, header, cases, the error's line number, a phrase of the error)
    (
        "timestamps",
        replace(HEADER, "@timeStamps", "@timeStamps true"),
        ["1:2:a"],
        3,
        "not supported",
    ),
    ("classlabel false", replace(HEADER, "@classLabel", "@classLabel false"), ["1:2"], 8, "false"),
    ("regression", [*HEADER[:-1], "@targetLabel true", "@data"], ["1:2:a"], 9, "regression"),
    (
        "no labels listed",
        replace(HEADER, "@classLabel", "@classLabel true"),
        ["1:2:a"],
        8,
        "no labels",
    ),
    (
        "dims vs header",
        HEADER,
        ["1:2:a", "1:2:3:a"],
        11,
        "expected 2 dimensions .as in @dimensions",
    ),
    (
        "dims vs first case",
        replace(HEADER, "@dimensions", None),
        ["1:2:a", "1:2:3:a"],
        10,
        "first case",
    ),
    ("ragged case", HEADER, ["1,2:3:a"], 10, "same number of values"),
    ("label missing", HEADER, ["1,2:3,4"], 10, "class label after the last"),
    ("label missing univariate", HEADER, ["1,2"], 10, "class label after the last"),
    ("label unknown", HEADER, ["1:2:a", "1:2:z"], 11, "among @classLabel's a b c, got 'z'"),
    ("non-numeric", HEADER, ["1,x,3:4,5,6:a"], 10, "dimension 1, value 2: expected a number"),
    ("empty value", HEADER, ["1,,3:4,5,6:a"], 10, "dimension 1, value 2"),
    ("interior missing", HEADER, ["1,?,3:4,5,6:a"], 10, "value 2 is missing"),
    ("trailing missing in one dim", HEADER, ["1,2,?:4,5,6:a"], 10, "value 3 is missing"),
    ("all missing", HEADER, ["?,?:?,?:a"], 10, "only missing values"),
    ("infinite", HEADER, ["1,inf:4,5:a"], 10, "infinite"),
    (
        "missing in equal-length file",
        replace(HEADER, "@equalLength", "@equalLength true"),
        ["1,2:3,4:a", "1,?:3,?:b"],
        11,
        "@equalLength true",
    ),
    (
        "series length",
        [*replace(HEADER, "@equalLength", "@equalLength true")[:-1], "@seriesLength 2", "@data"],
        ["1,2,3:3,4,5:a"],
        11,
        "@seriesLength",
    ),
    (
        "data before header",
        [h for h in HEADER if h != "@data"][:-1] + ["1:2:a"],
        [],
        8,
        "header line",
    ),
]


@pytest.mark.parametrize(
    ("header", "cases", "line", "phrase"),
    [case[1:] for case in BAD_CASES],
    ids=[case[0] for case in BAD_CASES],
)
def test_read_ts_refuses_bad_input_naming_file_and_line(
    tmp_path: Path, header: list[str], cases: list[str], line: int, phrase: str
) -> None:
    path = write(tmp_path / "Bad_TRAIN.ts", header, cases)
    with pytest.raises(DataError, match=rf"^Bad_TRAIN\.ts line {line}\b.*{phrase}"):
        read_ts(path)


def test_read_ts_refuses_missing_data_and_no_cases(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^nodata\.ts: expected an @data line"):
        read_ts(write(tmp_path / "nodata.ts", HEADER[:-1], []))
    with pytest.raises(DataError, match=r"^empty\.ts: expected cases after @data, got none"):
        read_ts(write(tmp_path / "empty.ts", HEADER, ["# only a comment", ""]))
    no_labels = replace(HEADER, "@classLabel", None)
    with pytest.raises(DataError, match=r"^nl\.ts line 8: expected an '@classLabel true"):
        read_ts(write(tmp_path / "nl.ts", no_labels, ["1:2:a"]))


def test_read_ts_error_names_the_case_number(tmp_path: Path) -> None:
    path = write(tmp_path / "c.ts", HEADER, ["1:2:a", "# comment", "1:2:a", "1:x:a"])
    with pytest.raises(DataError, match=r"c\.ts line 13 \(case 3\)"):
        read_ts(path)


# ------------------------------------------------------------------------------ load_ts


def pair(folder: Path, name: str = "Toy", test_labels: str = "a b c") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / f"{name}_TRAIN.ts", HEADER, ["1,2:3,4:a", "5:6:b", "7,8,9:1,2,3:c", "1:1:a"])
    test_header = replace(HEADER, "@classLabel", f"@classLabel true {test_labels}")
    write(folder / f"{name}_TEST.ts", test_header, ["1:2:c", "3,4:5,6:a"])
    return folder


@pytest.mark.parametrize("which", ["folder", "Toy_TRAIN.ts", "Toy_TEST.ts"])
def test_load_ts_finds_the_pair_from_either_file_or_the_folder(tmp_path: Path, which: str) -> None:
    folder = pair(tmp_path / "uea")
    data = load_ts(folder if which == "folder" else folder / which)
    assert isinstance(data, ClassificationData)
    assert data.name == "Toy" and data.classes == ["a", "b", "c"] and data.channels == 2
    np.testing.assert_array_equal(data.train.y, [0, 1, 2, 0])
    np.testing.assert_array_equal(data.test.y, [2, 0])
    assert data.train.y.dtype == np.int64
    assert [x.shape for x in data.test.x] == [(1, 2), (2, 2)]
    assert Path(data.metadata["train_file"]).name == "Toy_TRAIN.ts"


def test_load_ts_refuses_missing_partner_and_bad_names(tmp_path: Path) -> None:
    folder = pair(tmp_path / "uea")
    (folder / "Toy_TEST.ts").unlink()
    with pytest.raises(DataError, match=r"Toy_TRAIN\.ts: expected its partner Toy_TEST\.ts"):
        load_ts(folder)
    with pytest.raises(DataError, match=r"odd\.ts: expected a file named NAME_TRAIN\.ts"):
        load_ts(write(tmp_path / "odd.ts", HEADER, ["1:2:a"]))
    with pytest.raises(DataError, match="no such file or folder"):
        load_ts(tmp_path / "nowhere")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="exactly one NAME_TRAIN.ts file in the folder, got none"):
        load_ts(tmp_path / "none")
    two = pair(pair(tmp_path / "two", "A"), "B")
    with pytest.raises(DataError, match="got A_TRAIN.ts, B_TRAIN.ts"):
        load_ts(two)


def test_load_ts_refuses_disagreeing_class_labels(tmp_path: Path) -> None:
    folder = pair(tmp_path / "uea", test_labels="a b c d")
    with pytest.raises(DataError, match=r"Toy_TEST\.ts: expected the class labels of Toy_TRAIN"):
        load_ts(folder)


# ------------------------------------------------------------------------------ load_npz


def test_load_npz_two_and_three_dimensional_with_lengths_and_string_labels(
    tmp_path: Path,
) -> None:
    x_train = np.arange(4 * 5 * 3, dtype=np.float64).reshape(4, 5, 3)
    x_train[1, 3:] = np.nan  # padding beyond the valid length may hold anything
    path = tmp_path / "set.npz"
    np.savez(
        path,
        x_train=x_train,
        y_train=np.array(["dog", "cat", "dog", "eel"]),
        x_test=np.ones((2, 5, 3), np.float32),
        y_test=np.array(["cat", "ant"]),
        lengths_train=np.array([5, 3, 1, 5]),
    )
    data = load_npz(path)
    assert data.name == "set" and data.classes == ["ant", "cat", "dog", "eel"]
    np.testing.assert_array_equal(data.train.y, [2, 1, 2, 3])
    np.testing.assert_array_equal(data.test.y, [1, 0])
    assert [x.shape for x in data.train.x] == [(5, 3), (3, 3), (1, 3), (5, 3)]
    assert all(x.dtype == np.float32 for x in data.train.x)
    np.testing.assert_array_equal(data.train.x[1], x_train[1, :3])
    assert data.train.x[0].base is data.train.x[3].base is not None  # views of one array

    one = tmp_path / "one.npz"
    np.savez(one, x_train=np.zeros((3, 4)), y_train=[10, 2, 2], x_test=np.zeros((1, 4)), y_test=[9])
    data = load_npz(one, name="uni")
    assert data.name == "uni" and data.channels == 1
    assert data.classes == ["2", "9", "10"]  # integers sorted numerically
    np.testing.assert_array_equal(data.train.y, [2, 0, 0])
    assert data.train.x[0].shape == (4, 1)


def good_arrays() -> dict[str, np.ndarray]:
    return {
        "x_train": np.zeros((3, 4, 2)),
        "y_train": np.array([0, 1, 0]),
        "x_test": np.zeros((2, 4, 2)),
        "y_test": np.array([1, 1]),
    }


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"x_train": None}, "missing x_train"),
        ({"y_train": np.array([0, 1])}, r"expected y_train of shape \(3,\)"),
        ({"x_test": np.zeros((2, 4, 3))}, "channels of x_train"),
        ({"x_train": np.zeros((3, 4, 2, 1))}, r"shape \(N, T\) or \(N, T, C\)"),
        ({"x_train": np.array([["a", "b"]] * 3)}, "expected numeric x_train"),
        ({"x_test": np.full((2, 4, 2), np.inf)}, "x_test case 0 holds NaN or infinite"),
        ({"lengths_train": np.array([1, 5, 2])}, r"lengths_train\[1\] = 5; expected .* 1\.\.4"),
        ({"lengths_train": np.array([0, 1, 2])}, r"lengths_train\[0\] = 0"),
        ({"lengths_test": np.array([1.0, 2.0])}, "expected lengths_test of 2 integers"),
        ({"y_train": np.array([0.0, 1.0, 0.0])}, "integer or string labels"),
        ({"y_test": np.array(["a", "b"])}, "same kind"),
        ({"x_train": np.zeros((0, 4, 2)), "y_train": np.zeros(0, int)}, "at least one case"),
    ],
)
def test_load_npz_refuses_bad_arrays(tmp_path: Path, change: dict, phrase: str) -> None:
    arrays = good_arrays()
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=rf"^bad\.npz: .*{phrase}"):
        load_npz(path)


def test_load_npz_refuses_object_arrays_without_unpickling(tmp_path: Path) -> None:
    arrays = good_arrays()
    arrays["x_train"] = np.array([np.zeros((2, 2)), np.zeros((3, 2)), np.zeros((1, 2))], object)
    path = tmp_path / "obj.npz"
    np.savez(path, **arrays)  # numpy pickles object arrays when saving
    with pytest.raises(DataError, match=r"^obj\.npz: x_train is an object \(pickled\) array"):
        load_npz(path)


def test_load_npz_refuses_non_archives(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match=r"^junk\.npz: expected an \.npz archive"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(DataError, match="no such file"):
        load_npz(tmp_path / "absent.npz")


# ------------------------------------------------------------------------------ splitting


def test_stratified_split_proportions_determinism_disjointness() -> None:
    y = np.repeat(np.arange(4), [50, 20, 7, 2])
    rng = np.random.default_rng(3)
    y = y[rng.permutation(len(y))]
    train, valid = stratified_split(y, 0.2, seed=5)
    assert train.dtype == valid.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(valid) > 0)
    assert np.intersect1d(train, valid).size == 0
    np.testing.assert_array_equal(np.union1d(train, valid), np.arange(len(y)))
    assert np.bincount(y[valid], minlength=4).tolist() == [10, 4, 1, 1]  # round, at least 1
    again = stratified_split(y, 0.2, seed=5)
    np.testing.assert_array_equal(again[1], valid)
    other = stratified_split(y, 0.2, seed=6)
    assert not np.array_equal(other[1], valid)
    # a class with one case stays in train; a class of two keeps one case on each side
    train, valid = stratified_split(np.array([0, 0, 1, 2, 2]), 0.9, seed=0)
    assert 2 not in valid and sorted(np.bincount(np.array([0, 0, 1, 2, 2])[valid])) == [0, 1, 1]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_stratified_split_refuses_fraction_outside_open_interval(fraction: float) -> None:
    with pytest.raises(DataError, match=r"valid_fraction: expected a number in \(0, 1\)"):
        stratified_split(np.array([0, 0, 1, 1]), fraction, seed=0)


def test_sequence_set_subset_and_len() -> None:
    s = SequenceSet([np.zeros((i + 1, 2), np.float32) for i in range(5)], np.arange(5) % 2)
    sub = s.subset(np.array([4, 1]))
    assert len(sub) == 2 and [x.shape[0] for x in sub.x] == [5, 2]
    np.testing.assert_array_equal(sub.y, [0, 1])
    with pytest.raises(DataError, match="one label per sequence"):
        SequenceSet([np.zeros((1, 1))], np.array([0, 1]))


# ------------------------------------------------------------------------------ named sets


def test_load_classification_dispatches_names_and_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []

    def fake_mnist(view: str, **kw: object) -> str:
        calls.append((view, kw.get("permute_seed")))
        return "mnist"

    monkeypatch.setattr(cdata, "load_mnist", fake_mnist)
    monkeypatch.setattr(cdata, "load_japanese_vowels", lambda: "jv")
    assert load_classification("JapaneseVowels") == "jv"
    assert load_classification("japanese_vowels") == "jv"
    for spec in ("mnist-rows", "MNIST_Pixels", "mnist_pixels-PERMUTED"):
        assert load_classification(spec) == "mnist"
    assert calls == [("rows", None), ("pixels", None), ("pixels", 0)]
    assert set(CLASSIFICATION_DATASETS) == {
        "japanesevowels", "mnist-rows", "mnist-pixels", "mnist-pixels-permuted",
    }  # fmt: skip

    folder = pair(tmp_path / "uea")
    assert load_classification(str(folder)).name == "Toy"
    assert load_classification(folder / "Toy_TEST.ts").name == "Toy"
    np.savez(tmp_path / "a.npz", **good_arrays())
    assert load_classification(str(tmp_path / "a.npz")).name == "a"
    with pytest.raises(DataError, match=r"unknown data set 'fashion': expected one of japanese"):
        load_classification("fashion")
    with pytest.raises(DataError, match="no such file or folder"):
        load_classification(str(tmp_path / "missing.ts"))
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"x\.csv: unsupported file type '\.csv'.*\.npz"):
        load_classification(str(tmp_path / "x.csv"))


def test_named_mnist_view_of_a_local_copy(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 60000),
        x_test=rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 10000),
    )
    pixels = load_classification(f"MNIST-pixels:{path}")
    assert pixels.name == "mnist-pixels" and pixels.test.x[0].shape == (784, 1)
    assert pixels.metadata["file"] == str(path)
    assert load_classification(f"mnist-rows:{path}").train.x[0].shape == (28, 28)
    with pytest.raises(DataError, match="no such file"):
        load_classification(f"mnist-rows:{tmp_path / 'absent.npz'}")


def test_japanese_vowels_without_the_packages_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cdata, "_package_dirs", lambda package: [])
    with pytest.raises(DataError, match="pip install sktime.*--data PATH"):
        load_japanese_vowels()


def _have(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


@pytest.mark.skipif(
    not (_have("sktime") or _have("aeon")), reason="neither sktime nor aeon is installed"
)
def test_japanese_vowels_from_the_installed_wheel_matches_the_shared_copy() -> None:
    data = load_japanese_vowels()
    assert (len(data.train), len(data.test), data.channels) == (270, 370, 12)
    assert data.classes == [str(i) for i in range(1, 10)]
    assert all(7 <= len(x) <= 29 for x in data.train.x + data.test.x)
    assert np.bincount(data.train.y).tolist() == [30] * 9
    shared = SHARED / "classification"
    if not shared.is_dir():
        pytest.skip(f"{shared} is absent (only in the project workplace)")
    ref = load_ts(shared)
    assert ref.classes == data.classes and ref.name == data.name
    for a, b in ((data.train, ref.train), (data.test, ref.test)):
        np.testing.assert_array_equal(a.y, b.y)
        for xa, xb in zip(a.x, b.x, strict=True):
            np.testing.assert_array_equal(xa, xb)


@pytest.mark.skipif(not _have("sktime"), reason="sktime is not installed")
def test_japanese_vowels_does_not_import_sktime() -> None:
    code = (
        "import sys; from grukit.tasks.classify.data import load_japanese_vowels as f; "
        "assert len(f().train) == 270; assert 'sktime' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


MNIST = SHARED / "mnist" / "mnist.npz"
needs_mnist = pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} is absent")


@needs_mnist
def test_mnist_views_from_the_shared_copy() -> None:
    rows = load_mnist("rows", path=MNIST)
    assert rows.name == "mnist-rows" and rows.classes == [str(d) for d in range(10)]
    assert (len(rows.train), len(rows.test), rows.channels) == (60000, 10000, 28)
    assert rows.train.x[0].shape == (28, 28) and rows.train.x[0].dtype == np.float32
    assert rows.train.x[0].base is rows.train.x[-1].base is not None  # views of one array
    assert rows.train.x[7].min() >= 0.0 and rows.train.x[7].max() <= 1.0
    with np.load(MNIST) as raw:
        first = raw["x_train"][0].astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(rows.train.x[0], first)
        np.testing.assert_array_equal(rows.test.y, raw["y_test"])
    pixels = load_mnist("pixels", path=MNIST)
    assert pixels.test.x[0].shape == (784, 1) and pixels.channels == 1
    np.testing.assert_array_equal(pixels.test.x[3][:, 0], rows.test.x[3].reshape(-1))
    permuted = load_mnist("pixels", path=MNIST, permute_seed=0)
    perm = np.random.default_rng(0).permutation(784)
    assert permuted.name == "mnist-pixels-permuted"
    np.testing.assert_array_equal(permuted.test.x[3][:, 0], pixels.test.x[3][perm, 0])
    np.testing.assert_array_equal(permuted.train.y, pixels.train.y)


def test_mnist_local_file_of_the_wrong_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(
        path,
        x_train=np.zeros((10, 28, 28), np.uint8),
        y_train=np.zeros(10, np.uint8),
        x_test=np.zeros((5, 28, 28), np.uint8),
        y_test=np.zeros(5, np.uint8),
    )
    with pytest.raises(DataError, match=r"m\.npz: expected x_train of shape \(60000, 28, 28\)"):
        load_mnist("rows", path=path)
    with pytest.raises(DataError, match="expected 'rows' or 'pixels', got 'cols'"):
        load_mnist("cols", path=path)


def _offline(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError(OSError("Network is unreachable"))


def test_mnist_download_offline_raises_download_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRUKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    with pytest.raises(DownloadError, match=r"could not download 'mnist' from https://.*--data"):
        load_mnist("rows")
    with pytest.raises(DownloadError, match="could not download 'mnist'"):
        load_classification("mnist-pixels-permuted")
    assert not list((tmp_path / "cache").rglob("*.npz"))  # no partial file left behind


def test_download_cache_uses_the_entry_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = download.OTHER_DATASETS["mnist"]
    assert entry.folder == "mnist" and entry.format == "npz"
    assert download._cached_path(entry, tmp_path) == tmp_path / "mnist" / "mnist.npz"
    assert download.REGISTRY["jsb"].folder == "polyphonic"
    assert "mnist" not in download.REGISTRY  # the music loader's names stay the four benchmarks
    payload = b"cached bytes"
    local = dataclasses.replace(entry, sha256=hashlib.sha256(payload).hexdigest(), folder="sub")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mnist.npz").write_bytes(payload)
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    assert download.fetch(local, tmp_path) == tmp_path / "sub" / "mnist.npz"  # cache hit
    short = download.DatasetEntry("toy", "http://x/y", "0" * 64, "npz", "y.npz")
    assert short.split_sizes == () and short.folder == "polyphonic"
