"""Loading polyphonic-music data sets: files, validation, the restricted unpickler, downloads."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import pickle
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from grukit.data import download
from grukit.data.download import REGISTRY, DatasetEntry, fetch
from grukit.errors import DataError, DownloadError
from grukit.tasks.music import (
    NUM_KEYS,
    SPLITS,
    PianoRollDataset,
    RestrictedUnpickler,
    frames_to_roll,
    load_polyphonic,
    polyphonic,
    roll_to_frames,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "polyphonic"
JSB_PICKLE = SHARED / "jsb_chorales.pickle"
JSB_MAT = SHARED / "JSB_Chorales.mat"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (only in the project workplace)")
    return path


def toy_frames() -> dict[str, list[list[tuple[int, ...]]]]:
    """A small valid data set in the pickle layout, with numpy int64 pitches and a rest."""
    p = np.int64
    return {
        "train": [[(p(60), p(64), p(67)), (), (p(21), p(108))], [(p(48),)]],
        "valid": [[(p(62), p(65)), (p(62), p(65))]],
        "test": [[(p(55), p(59), p(62), p(67))]],
    }


def write_pickle(path: Path, obj: object, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def cell_array(rolls: list[np.ndarray]) -> np.ndarray:
    cells = np.empty((1, len(rolls)), dtype=object)
    for i, roll in enumerate(rolls):
        cells[0, i] = roll
    return cells


def write_mat(path: Path, **variables: object) -> Path:
    scipy.io.savemat(path, variables)
    return path


def toy_mat_vars() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    rolls = [(rng.random((t, NUM_KEYS)) < 0.05).astype(np.uint8) for t in (5, 3, 7, 2)]
    return {
        "traindata": cell_array(rolls[:2]),
        "validdata": cell_array(rolls[2:3]),
        "testdata": cell_array(rolls[3:]),
    }


# --------------------------------------------------------------------------------------------
# the real JSB Chorales files


def test_jsb_pickle_and_mat_load_and_agree_frame_by_frame() -> None:
    pickled = load_polyphonic(need(JSB_PICKLE))
    mat = load_polyphonic(need(JSB_MAT))
    for ds in (pickled, mat):
        assert [len(ds.splits[s]) for s in SPLITS] == [229, 76, 77]
        assert tuple(len(ds.splits[s]) for s in SPLITS) == REGISTRY["jsb"].split_sizes
        assert ds.num_frames() == 23134
        for roll in ds.splits["train"]:
            assert roll.dtype == np.float32 and roll.ndim == 2 and roll.shape[1] == NUM_KEYS
            assert set(np.unique(roll)) <= {0.0, 1.0}
    for split in SPLITS:
        for i, (a, b) in enumerate(zip(pickled.splits[split], mat.splits[split], strict=True)):
            assert np.array_equal(a, b), f"{split} {i}"


def test_jsb_pickle_frames_round_trip_through_rolls() -> None:
    with open(need(JSB_PICKLE), "rb") as f:
        raw = RestrictedUnpickler(f, source="jsb").load()
    ds = load_polyphonic(JSB_PICKLE)
    for split in SPLITS:
        for frames, roll in zip(raw[split], ds.splits[split], strict=True):
            assert roll_to_frames(roll) == [tuple(sorted(int(p) for p in f)) for f in frames]


def test_jsb_by_name_uses_a_verified_cached_copy(tmp_path: Path) -> None:
    cached = tmp_path / "polyphonic" / REGISTRY["jsb"].filename
    cached.parent.mkdir(parents=True)
    shutil.copyfile(need(JSB_MAT), cached)
    ds = load_polyphonic("jsb", cache_dir=tmp_path, progress=False)  # no network needed
    assert ds.name == "jsb" and [len(ds.splits[s]) for s in SPLITS] == [229, 76, 77]


def test_truncated_real_pickle_is_reported() -> None:
    data = need(JSB_PICKLE).read_bytes()
    with pytest.raises(DataError, match="truncated or corrupt"):
        polyphonic._unpickle(data[: len(data) // 2], "half.pickle")


# --------------------------------------------------------------------------------------------
# converters and the data set class


def test_frames_to_roll_and_back() -> None:
    frames = [(60, 64, 67), (), (21, 108), (67, 64, 60)]
    roll = frames_to_roll(frames)
    assert roll.shape == (4, 88) and roll.dtype == np.float32
    assert roll[0, 60 - 21] == 1 and roll[2, 0] == 1 and roll[2, 87] == 1
    assert roll[1].sum() == 0
    assert roll_to_frames(roll) == [(60, 64, 67), (), (21, 108), (60, 64, 67)]
    assert frames_to_roll([(np.int64(60), 62.0)]).sum() == 2  # numpy ints, integral floats


@pytest.mark.parametrize(
    ("frames", "words"),
    [
        ([(60,), (20,)], ["frame 1", "pitch 20", "outside the piano range 21..108"]),
        ([(109, 60)], ["frame 0", "pitch 109", "outside the piano range 21..108"]),
        ([(60.5,)], ["frame 0", "integer", "60.5"]),
        ([("C4",)], ["frame 0", "integer", "str"]),
        ([(True,)], ["integer"]),
        ([], ["empty sequence"]),
        ([60, 64], ["frame 0", "tuple of MIDI pitches"]),
    ],
)
def test_frames_to_roll_rejects_bad_input(frames: list, words: list[str]) -> None:
    with pytest.raises(DataError) as err:
        frames_to_roll(frames, where="song")
    assert str(err.value).startswith("song")
    for word in words:
        assert word in str(err.value)


def test_dataset_helpers_and_checks() -> None:
    roll = np.zeros((3, 88), dtype=np.uint8)
    roll[:, 39] = 1
    ds = PianoRollDataset("toy", {"train": [roll, roll[:1]], "valid": [roll], "test": []}, "x")
    assert ds.splits["train"][0].dtype == np.float32
    assert ds.num_frames("train") == 4 and ds.num_frames() == 7
    assert ds.num_sequences() == 3 and ds.num_sequences("test") == 0
    text = ds.summary()
    assert "train" in text and "2 sequences" in text and "empty" in text
    with pytest.raises(KeyError, match="unknown split"):
        ds.num_frames("training")
    with pytest.raises(DataError, match="missing split 'test'"):
        PianoRollDataset("toy", {"train": [roll], "valid": [roll]}, "x")
    with pytest.raises(DataError, match=r"sequence 0.*\(T, 88\)"):
        PianoRollDataset("toy", {"train": [roll[:, :87]], "valid": [], "test": []}, "x")
    with pytest.raises(DataError, match="0 or 1"):
        PianoRollDataset("toy", {"train": [roll * 2], "valid": [], "test": []}, "x")
    with pytest.raises(DataError, match="empty sequence"):
        PianoRollDataset("toy", {"train": [roll[:0]], "valid": [], "test": []}, "x")


# --------------------------------------------------------------------------------------------
# pickles


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_synthetic_pickle_loads(tmp_path: Path, protocol: int) -> None:
    ds = load_polyphonic(write_pickle(tmp_path / "toy.pkl", toy_frames(), protocol))
    assert ds.name == "toy" and ds.num_sequences() == 4
    assert roll_to_frames(ds.splits["train"][0]) == [(60, 64, 67), (), (21, 108)]


def test_numpy1_spelling_of_the_scalar_global_loads(tmp_path: Path) -> None:
    data = pickle.dumps(toy_frames(), protocol=2)
    old = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    assert old != data
    (tmp_path / "old.pickle").write_bytes(old)
    ds = load_polyphonic(tmp_path / "old.pickle")
    assert roll_to_frames(ds.splits["test"][0]) == [(55, 59, 62, 67)]


class _Reduce:
    """Pickles as the call ``func(*args)``."""

    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


def _exploit(func: object, arg: str) -> _Reduce:
    return _Reduce(func, (arg,))


@pytest.mark.parametrize(
    ("func", "command", "protocol", "name"),
    [
        (os.system, "touch {marker}", 2, "posix.system"),
        (os.system, "touch {marker}", 5, "posix.system"),
        (eval, "open({marker!r}, 'w').close()", 2, "__builtin__.eval"),
        (eval, "open({marker!r}, 'w').close()", 4, "builtins.eval"),
    ],
)
def test_malicious_pickle_is_refused_without_running_anything(
    tmp_path: Path, func: object, command: str, protocol: int, name: str
) -> None:
    marker = tmp_path / "pwned"
    payload = {"train": [[(60,)]], "valid": _exploit(func, command.format(marker=str(marker)))}
    path = write_pickle(tmp_path / "evil.pickle", payload, protocol)
    with pytest.raises(DataError) as err:
        load_polyphonic(path)
    message = str(err.value)
    assert f"refusing to load '{name}' from evil.pickle" in message
    assert "only plain containers, numbers and numpy scalars are allowed" in message
    assert not marker.exists()
    # the payload is live: an unrestricted unpickler would have run it
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_codecs_encode_is_only_allowed_for_latin1(tmp_path: Path) -> None:
    import _codecs

    evil = {"train": [[(60,)]], "x": _exploit(_codecs.encode, "abc")}  # default utf-8
    with pytest.raises(DataError, match="truncated or corrupt.*latin1"):
        load_polyphonic(write_pickle(tmp_path / "c.pickle", evil))


def test_numpy_scalar_with_object_fields_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    scalar = polyphonic._numpy_scalar()
    bad = _Reduce(scalar, (np.dtype([("a", "O")]), b"\0" * 8))
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_polyphonic(write_pickle(tmp_path / "s.pickle", {"train": [[(bad,)]]}))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"this is not a pickle at all", "truncated or corrupt"),
        (b"", "truncated or corrupt"),
        (pickle.dumps(toy_frames(), protocol=2)[:150], "truncated or corrupt"),
    ],
)
def test_corrupt_pickles(tmp_path: Path, data: bytes, words: str) -> None:
    (tmp_path / "bad.pickle").write_bytes(data)
    with pytest.raises(DataError, match=words) as err:
        load_polyphonic(tmp_path / "bad.pickle")
    assert "bad.pickle" in str(err.value)


def _with(split: str, seq: int, frame: int, value: object) -> dict:
    data = toy_frames()
    frames = list(data[split][seq])
    frames[frame] = value
    data[split][seq] = frames
    return data


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        (
            _with("valid", 0, 1, (62, 20)),
            ["bad.pickle", "split 'valid'", "sequence 0", "frame 1", "pitch 20", "21..108"],
        ),
        (
            _with("train", 1, 0, (109,)),
            ["split 'train'", "sequence 1", "frame 0", "pitch 109", "21..108"],
        ),
        (_with("test", 0, 0, (60.25,)), ["split 'test'", "frame 0", "integer", "60.25"]),
        (_with("train", 0, 2, "C4"), ["frame 2", "tuple of MIDI pitches"]),
        ({**toy_frames(), "valid": [[(60,)], []]}, ["split 'valid'", "sequence 1", "empty"]),
        ({"train": toy_frames()["train"], "valid": [[(60,)]]}, ["missing split 'test'"]),
        ({**toy_frames(), "test": []}, ["split 'test'", "no sequences"]),
        ({**toy_frames(), "test": "abc"}, ["split 'test'", "list of sequences"]),
        ({**toy_frames(), "test": [(60, 64)]}, ["sequence 0", "frame 0", "tuple of MIDI"]),
        ([[(60,)]], ["expected a dict", "'train', 'valid', 'test'", "list"]),
    ],
)
def test_invalid_pickled_content(tmp_path: Path, obj: object, words: list[str]) -> None:
    with pytest.raises(DataError) as err:
        load_polyphonic(write_pickle(tmp_path / "bad.pickle", obj))
    for word in words:
        assert word in str(err.value)


# --------------------------------------------------------------------------------------------
# .mat files


def test_synthetic_mat_loads(tmp_path: Path) -> None:
    variables = toy_mat_vars()
    ds = load_polyphonic(write_mat(tmp_path / "toy.mat", **variables))
    assert [len(ds.splits[s]) for s in SPLITS] == [2, 1, 1]
    assert np.array_equal(ds.splits["valid"][0], variables["validdata"][0, 0])


def test_truncated_mat(tmp_path: Path) -> None:
    data = write_mat(tmp_path / "full.mat", **toy_mat_vars()).read_bytes()
    for n in (len(data) // 2, 64, 0):
        (tmp_path / "cut.mat").write_bytes(data[:n])
        with pytest.raises(DataError, match=r"cut\.mat is truncated or corrupt"):
            load_polyphonic(tmp_path / "cut.mat")


def test_real_mat_truncated(tmp_path: Path) -> None:
    data = need(JSB_MAT).read_bytes()
    (tmp_path / "half.mat").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"half\.mat is truncated or corrupt"):
        load_polyphonic(tmp_path / "half.mat")


def test_mat_with_wrong_keys_shape_or_values(tmp_path: Path) -> None:
    good = toy_mat_vars()
    no_valid = {k: v for k, v in good.items() if k != "validdata"}
    twos = good["traindata"][0, 1].copy()
    twos[1, 5] = 2
    cases = [
        (no_valid | {"valid": good["validdata"]}, ["missing variable 'validdata'", "valid"]),
        (
            good | {"testdata": cell_array([np.zeros((4, 87), dtype=np.uint8)])},
            ["split 'test'", "sequence 0", "(T, 88)", "(4, 87)"],
        ),
        (
            good | {"traindata": cell_array([good["traindata"][0, 0], twos])},
            ["split 'train'", "sequence 1", "frame 1", "0 or 1", "MIDI 26"],
        ),
        (good | {"traindata": np.ones((3, 88))}, ["'traindata'", "cell array"]),
        (
            good | {"validdata": cell_array([np.zeros((0, 88), dtype=np.uint8)])},
            ["split 'valid'", "empty sequence"],
        ),
    ]
    for i, (variables, words) in enumerate(cases):
        path = write_mat(tmp_path / f"bad{i}.mat", **variables)
        with pytest.raises(DataError) as err:
            load_polyphonic(path)
        for word in [f"bad{i}.mat", *words]:
            assert word in str(err.value), (i, str(err.value))


# --------------------------------------------------------------------------------------------
# specs


def test_unknown_names_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_polyphonic("jsb-chorale-thing")
    for name in ("jsb", "nottingham", "musedata", "piano-midi", "bach"):
        assert name in str(err.value)
    with pytest.raises(DataError, match="no such data file"):
        load_polyphonic(tmp_path / "absent.pickle")
    (tmp_path / "notes.txt").write_text("60 64 67\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_polyphonic(tmp_path / "notes.txt")
    (tmp_path / "folder.pickle").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        load_polyphonic(tmp_path / "folder.pickle")


# --------------------------------------------------------------------------------------------
# downloads from a local server


class _Server:
    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "www"
    root.mkdir()
    srv = _Server(root)
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(5)


def _entry_for(path: Path, url: str) -> DatasetEntry:
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return DatasetEntry("toy", url, sha, "mat", "toy.mat", (2, 1, 1))


def test_fetch_downloads_verifies_and_caches(tmp_path: Path, server: _Server) -> None:
    src = write_mat(tmp_path / "www" / "toy.mat", **toy_mat_vars())
    entry = _entry_for(src, server.url + "/toy.mat")
    cache = tmp_path / "cache"
    got = fetch(entry, cache)
    assert got == cache / "polyphonic" / "toy.mat"
    assert got.read_bytes() == src.read_bytes()
    assert server.requests == ["/toy.mat"]
    assert fetch(entry, cache) == got  # cache hit, re-verified
    assert server.requests == ["/toy.mat"]
    assert polyphonic.load_mat(got).num_sequences() == 4
    assert sorted(p.name for p in got.parent.iterdir()) == ["toy.mat"]  # no temp files
    got.write_bytes(b"damaged")
    assert fetch(entry, cache).read_bytes() == src.read_bytes()  # re-downloaded
    assert len(server.requests) == 2


def test_fetch_named_with_url_override_then_load_by_name(tmp_path: Path, server: _Server) -> None:
    shutil.copyfile(need(JSB_MAT), tmp_path / "www" / "JSB_Chorales.mat")
    path = fetch("jsb", tmp_path / "cache", url=server.url + "/JSB_Chorales.mat")
    assert path.name == "JSB_Chorales.mat" and len(server.requests) == 1
    ds = load_polyphonic("JSB_Chorales", cache_dir=tmp_path / "cache", progress=False)
    assert ds.num_sequences() == 382 and len(server.requests) == 1
    assert ds.metadata["url"] == REGISTRY["jsb"].url


def test_fetch_checksum_mismatch_deletes_the_file(tmp_path: Path, server: _Server) -> None:
    src = write_mat(tmp_path / "www" / "toy.mat", **toy_mat_vars())
    entry = dataclasses.replace(_entry_for(src, server.url + "/toy.mat"), sha256="0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        fetch(entry, cache)
    message = str(err.value)
    actual = hashlib.sha256(src.read_bytes()).hexdigest()
    assert "checksum mismatch" in message and "0" * 64 in message and actual in message
    assert "--data" in message
    assert list((cache / "polyphonic").iterdir()) == []


def _one_sentence(message: str) -> bool:
    return "\n" not in message and not re.search(r"[.!?]\s+[A-Z]", message)


def test_fetch_unreachable_url_says_so_in_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        fetch("nottingham", tmp_path, url="http://127.0.0.1:9/Nottingham.mat", timeout=5)
    message = str(err.value)
    assert message.startswith("could not download 'nottingham' from http://127.0.0.1:9/")
    assert "no network?" in message and "--data PATH" in message
    assert _one_sentence(message)
    assert not (tmp_path / "polyphonic" / "Nottingham.mat").exists()
    assert list((tmp_path / "polyphonic").iterdir()) == []


def test_fetch_http_error(tmp_path: Path, server: _Server) -> None:
    entry = DatasetEntry("toy", server.url + "/missing.mat", "0" * 64, "mat", "toy.mat", (1, 1, 1))
    with pytest.raises(DownloadError) as err:
        fetch(entry, tmp_path / "cache")
    assert "HTTP 404" in str(err.value) and "--data" in str(err.value)
    assert _one_sentence(str(err.value))


@pytest.mark.parametrize(
    ("spec", "name"),
    [("musedata", "musedata"), ("MuseData", "musedata"), ("piano-midi.de", "piano-midi")],
)
def test_load_by_name_offline_raises_download_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, name: str
) -> None:
    entry = dataclasses.replace(REGISTRY[name], url="http://127.0.0.1:9/x.mat")
    monkeypatch.setitem(REGISTRY, name, entry)
    with pytest.raises(DownloadError, match=f"could not download '{name}'.*--data PATH"):
        load_polyphonic(spec, cache_dir=tmp_path, progress=False)


def test_cache_dir_default_and_unknown_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRUKIT_CACHE", str(tmp_path / "c"))
    assert download.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("GRUKIT_CACHE")
    assert download.default_cache_dir() == Path.home() / ".cache" / "grukit"
    with pytest.raises(DownloadError, match="unknown data set 'abc'"):
        fetch("abc", tmp_path)


def test_registry_matches_the_shared_readme() -> None:
    readme = SHARED.parent / "README.md"
    if not readme.is_file():
        pytest.skip(f"shared data README {readme} is absent (only in the project workplace)")
    text = readme.read_text()
    for entry in REGISTRY.values():
        row = next(line for line in text.splitlines() if entry.url in line)
        assert entry.sha256 in row
        assert "/".join(str(n) for n in entry.split_sizes) in row


# --------------------------------------------------------------------------------------------
# pickle bombs: memo references that expand to far more frames than the file holds

BOMB_SCRIPT = """
import pickle, resource, sys, time
from pathlib import Path
from grukit.errors import DataError
from grukit.tasks.music import load_polyphonic
path = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    load_polyphonic(path)
except DataError as exc:
    message = str(exc)
else:
    message = "LOADED"
seconds = time.perf_counter() - start
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
print(repr((message, seconds, grew)))
"""


def _bomb(kind: str) -> dict:
    frame = (60, 64, 67)
    if kind == "frames":  # ~900,000 frames from a few KB: one sequence shared 1,000 times
        sequence = [frame] * 900
        train = [sequence] * 1000
    else:  # few frames, each a shared frame of 10,000 notes
        big = tuple([60] * 10_000)
        train = [[big] * 100] * 1000
    return {"train": train, "valid": [[frame]], "test": [[frame]]}


@pytest.mark.parametrize(("kind", "words"), [("frames", "200000 frames"), ("notes", "notes")])
def test_pickle_bomb_is_refused_quickly_without_the_memory(tmp_path, kind, words):
    data = pickle.dumps(_bomb(kind), protocol=4)
    assert len(data) < 40_000  # a few KB
    path = tmp_path / "bomb.pickle"
    path.write_bytes(data)
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    message, seconds, grew_kib = eval(result.stdout.strip().splitlines()[-1])  # noqa: S307
    assert "bomb.pickle expands to more than" in message and "pickle bomb" in message
    assert "\n" not in message and words in message
    assert seconds < 10
    assert grew_kib < 100 * 1024  # well under 100 MB


def test_pickle_bomb_refused_in_process(tmp_path):
    path = write_pickle(tmp_path / "bomb.pickle", _bomb("frames"), protocol=4)
    with pytest.raises(DataError, match=r"bomb\.pickle expands to more than 200000 frames"):
        load_polyphonic(path)


def test_expansion_limits_admit_the_real_jsb_pickle() -> None:
    data = need(JSB_PICKLE).read_bytes()
    frames_limit, notes_limit = polyphonic.expansion_limits(len(data))
    obj = pickle.loads(data, encoding="latin1")
    frames = sum(len(s) for split in obj.values() for s in split)
    notes = sum(len(f) for split in obj.values() for s in split for f in s)
    assert frames * 10 < frames_limit and notes * 10 < notes_limit


def test_oversized_and_non_regular_pickles_are_refused(tmp_path, monkeypatch):
    path = write_pickle(tmp_path / "toy.pickle", toy_frames())
    monkeypatch.setattr(polyphonic, "MAX_PICKLE_BYTES", 50)
    with pytest.raises(DataError, match=r"toy\.pickle has \d+ bytes, expected a pickle of at most"):
        load_polyphonic(path)
    monkeypatch.undo()
    fifo = tmp_path / "fifo.pickle"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        load_polyphonic(fifo)
