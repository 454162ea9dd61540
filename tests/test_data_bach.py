"""The built-in Bach chorale data set (music21 corpus -> JSB-style piano rolls)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from grukit.errors import DataError
from grukit.tasks.music import NUM_KEYS, SPLITS, bach, load_polyphonic

pytest.importorskip("music21")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "polyphonic"

# f# minor (the -6 semitone edge case), a chorale with horns and timpani and repeats, one in
# f minor with repeats, one with two horn parts, two plain ones, and a keyboard piece
HANDFUL = [
    "bach/bwv145.5",
    "bach/bwv19.7",
    "bach/bwv354",
    "bach/bwv128.5",
    "bach/bwv269",
    "bach/bwv347",
    "bach/bwv846",
]
# corpus file -> (JSB split, index), where the rolls agree frame for frame (JSB adds a copy of
# the final chord to bwv128.5)
JSB_TWINS = {
    "bach/bwv145.5.mxl": ("traindata", 221),
    "bach/bwv19.7.mxl": ("traindata", 172),
    "bach/bwv354.mxl": ("validdata", 41),
    "bach/bwv128.5.mxl": ("traindata", 42),
}


@pytest.fixture(scope="module")
def parsed() -> bach.ParsedChorales:
    return bach.parse_chorales(HANDFUL, progress=False)


def test_a_handful_of_chorales_parse_into_rolls(parsed: bach.ParsedChorales) -> None:
    assert set(parsed.rolls) == {
        "bach/bwv145.5.mxl",
        "bach/bwv19.7.mxl",
        "bach/bwv354.mxl",
        "bach/bwv128.5.mxl",
        "bach/bwv269.mxl",
        "bach/bwv347.mxl",
    }
    for key, roll in parsed.rolls.items():
        assert roll.dtype == np.float32 and roll.ndim == 2 and roll.shape[1] == NUM_KEYS
        assert roll.shape[0] >= 24, key
        assert set(np.unique(roll)) == {0.0, 1.0}
        notes = roll.sum(axis=1)
        assert notes.max() <= 4, key  # vocal parts only: horns and timpani are left out
        assert np.mean(notes == 4) > 0.8, key
        # transposed to C: the final bass note is the tonic C, or its dominant G
        last = np.flatnonzero(roll[np.flatnonzero(notes)[-1]])
        assert (last[0] + 21) % 12 in (0, 7), key
        # in JSB's register: bass around MIDI 43..67, soprano around 72..96
        low = min(np.flatnonzero(r)[0] for r in roll if r.any()) + 21
        high = max(np.flatnonzero(r)[-1] for r in roll if r.any()) + 21
        assert 40 <= low <= 60 and 80 <= high <= 98, (key, low, high)
    assert parsed.skipped == {"bach/bwv846.mxl": "not a four-part chorale (parts: Piano, Piano)"}


def test_bwv145_5_is_transposed_from_f_sharp_minor_and_raised_an_octave(
    parsed: bach.ParsedChorales,
) -> None:
    from music21 import corpus

    score = corpus.parse("bach/bwv145.5")
    key = score.analyze("key")
    assert (key.tonic.name, key.mode) == ("F#", "minor")
    written = sorted(p.midi for part in score.parts for p in part.flatten().notes[-1].pitches)
    roll = parsed.rolls["bach/bwv145.5.mxl"]
    # F# -> C is -6 semitones (not +6), then up an octave to JSB's register: +6 in all
    assert [int(k) + 21 for k in np.flatnonzero(roll[-1])] == [p + 6 for p in written]


def test_rolls_match_their_jsb_twins(parsed: bach.ParsedChorales) -> None:
    mat = SHARED / "JSB_Chorales.mat"
    if not mat.is_file():
        pytest.skip(f"shared data file {mat} is absent (only in the project workplace)")
    jsb = load_polyphonic(mat)
    names = {"traindata": "train", "validdata": "valid", "testdata": "test"}
    for key, (split, index) in JSB_TWINS.items():
        ours, theirs = parsed.rolls[key], jsb.splits[names[split]][index]
        if len(theirs) == len(ours) + 1:  # JSB's repeated final chord
            assert np.array_equal(theirs[-1], theirs[-2])
            theirs = theirs[:-1]
        assert np.array_equal(ours, theirs), key


def test_unknown_and_unparsable_files_are_skipped_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bwv0.krn"
    bad.write_text("**kern\n*M4/4\nthis is not kern at all\n*-\n")
    result = bach.parse_chorales(["bach/no-such-chorale", bad], progress=False)
    assert result.rolls == {}
    assert result.skipped["bach/no-such-chorale"].startswith("not found")
    assert f"{tmp_path.name}/bwv0.krn" in result.skipped
    with pytest.raises(DataError, match="no score"):
        bach.resolve_chorale("bach/no-such-chorale")


def test_split_depends_on_the_key_only() -> None:
    # golden values: changing the split function silently changes the data set
    assert bach.split_of("bach/bwv269.mxl") == "train"
    assert bach.split_of("bach/bwv347.mxl") == "valid"
    assert bach.split_of("bach/bwv145.5.mxl") == "test"
    keys = [bach.chorale_key(p) for p in bach.chorale_paths()]
    assert 380 <= len(keys) <= 450 and len(set(keys)) == len(keys)
    assert not any(k.startswith("bach/bwv846") or k.endswith(".rntxt") for k in keys)
    counts = {s: sum(bach.split_of(k) == s for k in keys) for s in SPLITS}
    assert 0.5 < counts["train"] / len(keys) < 0.7
    assert 0.13 < counts["valid"] / len(keys) < 0.27
    assert 0.13 < counts["test"] / len(keys) < 0.27


def _fake(rolls: dict[str, int]) -> bach.ParsedChorales:
    out = bach.ParsedChorales()
    for i, (key, length) in enumerate(rolls.items()):
        roll = np.zeros((length, NUM_KEYS), dtype=np.float32)
        roll[:, 27 + i % 20] = 1
        out.rolls[key] = roll
    return out


def test_build_dataset_is_order_independent_and_drops_duplicates() -> None:
    keys = ["bach/bwv269.mxl", "bach/bwv354.mxl", "bach/bwv347.mxl", "bach/bwv145.5.mxl"]
    parsed = _fake(dict.fromkeys(keys, 3))
    parsed.rolls["bach/bwv0.dup.mxl"] = parsed.rolls["bach/bwv269.mxl"].copy()
    parsed.skipped["bach/bwv846.mxl"] = "not a four-part chorale"
    backwards = bach.ParsedChorales(dict(reversed(list(parsed.rolls.items()))), parsed.skipped)
    a, b = bach.build_dataset(parsed), bach.build_dataset(backwards)
    for split in SPLITS:
        assert a.metadata["names"][split] == b.metadata["names"][split]
        for x, y in zip(a.splits[split], b.splits[split], strict=True):
            assert np.array_equal(x, y)
    # the first key in sorted order is kept
    assert a.metadata["duplicates"] == {"bach/bwv269.mxl": "bach/bwv0.dup.mxl"}
    assert a.num_sequences() == 4
    assert a.metadata["skipped"] == {"bach/bwv846.mxl": "not a four-part chorale"}
    assert "dropped 1 that failed to parse and 1 duplicates" in a.summary()
    with pytest.raises(DataError, match="no 'valid' sequences"):
        bach.build_dataset(_fake({"bach/bwv269.mxl": 2}))


def test_cache_round_trip(
    tmp_path: Path, parsed: bach.ParsedChorales, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def parse_handful(paths: list, *, progress: bool = False) -> bach.ParsedChorales:
        calls.append(list(paths))
        return parsed

    monkeypatch.setattr(bach, "parse_chorales", parse_handful)
    monkeypatch.setattr(bach, "chorale_paths", lambda: HANDFUL)
    first = bach.load_bach(cache_dir=tmp_path, progress=False)
    path = bach.cache_path(tmp_path)
    assert path.is_file() and len(calls) == 1
    assert f"v{bach.FORMAT_VERSION}" in path.name and "music21-" in path.name
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left

    start = time.perf_counter()
    again = load_polyphonic("bach", cache_dir=tmp_path, progress=False)
    assert time.perf_counter() - start < 1.0
    assert len(calls) == 1  # from the cache
    assert again.metadata["cache"] == str(path)
    assert again.metadata["skipped"] == first.metadata["skipped"]
    for split in SPLITS:
        assert again.metadata["names"][split] == first.metadata["names"][split]
        assert len(again.splits[split]) == len(first.splits[split]) > 0
        for x, y in zip(again.splits[split], first.splits[split], strict=True):
            assert x.dtype == np.float32 and np.array_equal(x, y)

    # a damaged cache is rebuilt
    for damage, garbage in enumerate([b"not an npz file", path.read_bytes()[:500]], start=2):
        path.write_bytes(garbage)
        rebuilt = bach.load_bach(cache_dir=tmp_path, progress=False)
        assert len(calls) == damage and rebuilt.num_frames() == first.num_frames()
    assert bach.load_bach(cache_dir=tmp_path, progress=False).num_frames() == first.num_frames()
    assert len(calls) == 3


@pytest.mark.slow
def test_whole_corpus(tmp_path: Path) -> None:
    """Parses all ~400 chorales (about a minute): sizes, ranges, and the cache."""
    ds = bach.load_bach(cache_dir=tmp_path, progress=False)
    sizes = [ds.num_sequences(s) for s in SPLITS]
    total = sum(sizes)
    assert 380 <= total <= 420, sizes
    assert 0.5 < sizes[0] / total < 0.7 and 0.13 < sizes[1] / total < 0.27
    assert len(ds.metadata["skipped"]) <= 5, ds.metadata["skipped"]
    assert len(ds.metadata["duplicates"]) <= 20
    for split in SPLITS:
        for roll in ds.splits[split]:
            notes = roll.sum(axis=1)
            assert roll.shape[0] >= 8 and notes.max() <= 5  # two five-voice chorales
            last = np.flatnonzero(roll[np.flatnonzero(notes)[-1]])
            assert (last[0] + 21) % 12 in (0, 7)
    start = time.perf_counter()
    cached = load_polyphonic("bach", cache_dir=tmp_path, progress=False)
    assert time.perf_counter() - start < 1.0
    assert [cached.num_frames(s) for s in SPLITS] == [ds.num_frames(s) for s in SPLITS]
