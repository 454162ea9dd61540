"""Piano rolls to MIDI (and back) and to PNG."""

from __future__ import annotations

import re
from pathlib import Path

import mido
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from grukit.errors import DataError
from grukit.tasks.music.midi import TICKS_PER_BEAT, plot_piano_roll, read_midi_roll, write_midi

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "polyphonic"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chord_roll() -> np.ndarray:
    """Rest, a C major chord held 3 frames, a moving line, extreme keys, trailing rest."""
    roll = np.zeros((8, 88), dtype=np.float32)
    roll[1:4, [60 - 21, 64 - 21, 67 - 21]] = 1
    roll[4, 62 - 21] = 1
    roll[5, 64 - 21] = 1
    roll[4:7, 0] = 1  # MIDI 21
    roll[6, 87] = 1  # MIDI 108
    return roll


def notes_of(path: Path) -> list[tuple[int, str, int]]:
    """(absolute tick, type, note) of every note message in the file."""
    out, tick = [], 0
    for msg in mido.merge_tracks(mido.MidiFile(path).tracks):
        tick += msg.time
        if msg.type in ("note_on", "note_off"):
            kind = "on" if msg.type == "note_on" and msg.velocity > 0 else "off"
            out.append((tick, kind, msg.note))
    return out


def test_write_then_read_gives_the_roll_back(tmp_path: Path) -> None:
    roll = chord_roll()
    path = write_midi(roll, tmp_path / "song.mid")
    assert path == tmp_path / "song.mid"
    back = read_midi_roll(path)
    assert back.dtype == np.float32 and back.shape == roll.shape
    assert np.array_equal(back, roll)


def test_held_keys_are_one_note_each(tmp_path: Path) -> None:
    path = write_midi(chord_roll(), tmp_path / "song.mid", velocity=90, program=19)
    q = TICKS_PER_BEAT
    assert notes_of(path) == [
        (1 * q, "on", 60),
        (1 * q, "on", 64),
        (1 * q, "on", 67),
        (4 * q, "off", 60),
        (4 * q, "off", 64),
        (4 * q, "off", 67),
        (4 * q, "on", 21),
        (4 * q, "on", 62),
        (5 * q, "off", 62),
        (5 * q, "on", 64),
        (6 * q, "off", 64),
        (6 * q, "on", 108),
        (7 * q, "off", 21),
        (7 * q, "off", 108),
    ]
    midi = mido.MidiFile(path)
    msgs = list(midi.tracks[0])
    assert midi.type == 0 and midi.ticks_per_beat == q
    assert [m.tempo for m in msgs if m.type == "set_tempo"] == [mido.bpm2tempo(100)]
    assert [m.program for m in msgs if m.type == "program_change"] == [19]
    assert {m.velocity for m in msgs if m.type == "note_on"} == {90}
    assert sum(m.time for m in msgs) == 8 * q  # the track lasts all 8 frames
    assert midi.length == pytest.approx(8 * 60 / 100)  # 8 quarter notes at 100 bpm


def test_step_and_tempo(tmp_path: Path) -> None:
    roll = chord_roll()
    path = write_midi(roll, tmp_path / "fast.mid", step_beats=0.25, tempo_bpm=120)
    assert mido.MidiFile(path).length == pytest.approx(8 * 0.25 * 60 / 120)
    assert np.array_equal(read_midi_roll(path, step_beats=0.25), roll)
    # read at half the resolution: every other frame
    assert np.array_equal(read_midi_roll(path, step_beats=0.5), roll[::2])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    roll=arrays(np.uint8, st.tuples(st.integers(1, 24), st.just(88)), elements=st.integers(0, 1)),
    step=st.sampled_from([1.0, 0.5, 2.0]),
)
def test_round_trip_property(tmp_path: Path, roll: np.ndarray, step: float) -> None:
    path = write_midi(roll, tmp_path / "p.mid", step_beats=step)
    assert np.array_equal(read_midi_roll(path, step_beats=step), roll.astype(np.float32))


def test_real_chorales_round_trip(tmp_path: Path) -> None:
    mat = SHARED / "JSB_Chorales.mat"
    if not mat.is_file():
        pytest.skip(f"shared data file {mat} is absent (only in the project workplace)")
    from grukit.tasks.music import load_polyphonic

    for roll in load_polyphonic(mat).splits["valid"][:10]:
        path = write_midi(roll, tmp_path / "c.mid")
        assert np.array_equal(read_midi_roll(path), roll)


def test_overwrites_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "out.mid"
    write_midi(chord_roll(), path)
    write_midi(chord_roll()[:2], path)
    assert read_midi_roll(path).shape == (2, 88)
    with pytest.raises(DataError, match="0 or 1"):
        write_midi(np.full((3, 88), 0.5), path)  # probabilities must be thresholded first
    assert read_midi_roll(path).shape == (2, 88)  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.mid"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"roll": np.zeros((4, 87))}, "(T, 88)"),
        ({"roll": np.zeros(88)}, "(T, 88)"),
        ({"step_beats": 0.0}, "step_beats"),
        ({"step_beats": 1 / 7}, "step_beats"),  # not a whole number of ticks
        ({"velocity": 0}, "velocity"),
        ({"velocity": 128}, "velocity"),
        ({"program": 128}, "program"),
        ({"tempo_bpm": 0}, "tempo_bpm"),
    ],
)
def test_write_midi_rejects_bad_arguments(tmp_path: Path, kwargs: dict, words: str) -> None:
    args = {"roll": chord_roll(), **kwargs}
    with pytest.raises(DataError, match=re.escape(words)):
        write_midi(args.pop("roll"), tmp_path / "x.mid", **args)
    assert not (tmp_path / "x.mid").exists()


def test_read_midi_roll_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such MIDI file"):
        read_midi_roll(tmp_path / "absent.mid")
    (tmp_path / "junk.mid").write_bytes(b"definitely not MIDI")
    with pytest.raises(DataError, match="junk.mid is not a readable MIDI file"):
        read_midi_roll(tmp_path / "junk.mid")


def test_read_midi_from_another_writer(tmp_path: Path) -> None:
    """Two tracks, note_on with velocity 0 as note-off, a note off the piano, 8th-note grid."""
    midi = mido.MidiFile(type=1, ticks_per_beat=96)
    a, b = mido.MidiTrack(), mido.MidiTrack()
    a += [
        mido.Message("note_on", note=60, velocity=70, time=0),
        mido.Message("note_on", note=60, velocity=0, time=96),  # a quarter note at beat 0
        mido.Message("note_on", note=10, velocity=70, time=0),  # below A0: dropped
        mido.Message("note_off", note=10, time=48),
    ]
    b += [
        mido.Message("note_on", note=67, velocity=70, time=48, channel=1),  # at the 8th
        mido.Message("note_off", note=67, time=144, channel=1),  # 1.5 beats later
    ]
    midi.tracks += [a, b]
    midi.save(tmp_path / "other.mid")
    roll = read_midi_roll(tmp_path / "other.mid", step_beats=0.5)
    assert roll.shape == (4, 88)
    assert [tuple(int(k) + 21 for k in np.flatnonzero(r)) for r in roll] == [
        (60,),
        (60, 67),
        (67,),
        (67,),
    ]
    # sampled on quarter notes only: the 8th-note onset is seen at beat 1
    assert read_midi_roll(tmp_path / "other.mid").sum(axis=1).tolist() == [1, 1]


def test_plot_piano_roll_writes_a_png(tmp_path: Path) -> None:
    path = plot_piano_roll(chord_roll(), tmp_path / "roll.png", title="a chorale")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    empty = plot_piano_roll(np.zeros((5, 88), dtype=bool), tmp_path / "empty.png")
    assert empty.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "roll.png"]
    with pytest.raises(DataError, match="88"):
        plot_piano_roll(np.zeros((5, 12)), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_shows_the_notes(tmp_path: Path) -> None:
    """The picture is not blank: it has dark pixels, and more of them for more notes."""
    matplotlib_image = pytest.importorskip("matplotlib.image")
    sparse = np.zeros((16, 88), dtype=np.float32)
    sparse[:, 40] = 1
    dense = sparse.copy()
    dense[:, 30:50] = 1
    dark = []
    for name, roll in (("sparse", sparse), ("dense", dense)):
        image = matplotlib_image.imread(plot_piano_roll(roll, tmp_path / f"{name}.png"))
        dark.append(int((image[..., :3].mean(axis=-1) < 0.2).sum()))
    assert 0 < dark[0] < dark[1]
