"""Piano rolls out: MIDI files (mido) and PNG pictures (matplotlib, Agg).

A roll is a ``(T, 88)`` array of 0/1 (bool, int or float), column ``k`` being MIDI pitch
``21 + k``, row ``t`` one time step of ``step_beats`` beats (a quarter note for JSB Chorales).
A key that sounds in consecutive frames is one sustained note: note-on at the first frame,
note-off after the last, so a roll cannot express a repeated re-struck note.
Files are written atomically (a temporary file beside the target, then :func:`os.replace`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from grukit.data.download import atomic_output
from grukit.errors import DataError
from grukit.tasks.music.pianoroll import HIGHEST_PITCH, LOWEST_PITCH, NUM_KEYS

__all__ = ["plot_piano_roll", "read_midi_roll", "write_midi"]

TICKS_PER_BEAT = 480


def _binary_roll(roll: np.ndarray, what: str = "roll") -> np.ndarray:
    """``roll`` as a bool (T, 88) array, or DataError if it is not a 0/1 piano roll."""
    array = np.asarray(roll)
    if array.ndim != 2 or array.shape[1] != NUM_KEYS:
        raise DataError(
            f"{what}: expected a (T, {NUM_KEYS}) piano roll over MIDI {LOWEST_PITCH}-"
            f"{HIGHEST_PITCH}, got shape {array.shape}"
        )
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.number)):
        raise DataError(f"{what}: expected numbers 0/1, got dtype {array.dtype}")
    if array.dtype != np.bool_ and ((array != 0) & (array != 1)).any():
        raise DataError(
            f"{what}: values must be 0 or 1 (threshold probabilities first, e.g. roll > 0.5)"
        )
    return array.astype(bool)


def _ticks_per_step(step_beats: float, ticks_per_beat: int) -> int:
    ticks = step_beats * ticks_per_beat
    if not (math.isfinite(ticks) and ticks >= 1 and abs(ticks - round(ticks)) < 1e-6):
        raise DataError(
            f"step_beats={step_beats!r} must be a positive multiple of 1/{ticks_per_beat} beat"
        )
    return round(ticks)


def write_midi(
    roll: np.ndarray,
    path: str | os.PathLike[str],
    *,
    step_beats: float = 1.0,
    tempo_bpm: float = 100,
    velocity: int = 80,
    program: int = 0,
) -> Path:
    """Write a (T, 88) 0/1 roll as a type-0 MIDI file on channel 0; returns the path.

    Each frame lasts ``step_beats`` beats at ``tempo_bpm``; ``program`` is the General MIDI
    instrument (0 = acoustic grand piano). The track ends at ``T * step_beats`` beats, so
    trailing silent frames survive a round trip through :func:`read_midi_roll`.
    """
    import mido

    keys = _binary_roll(roll)
    if not 0 < tempo_bpm <= 10_000:
        raise DataError(f"tempo_bpm must be in (0, 10000], got {tempo_bpm!r}")
    if not (isinstance(velocity, (int, np.integer)) and 1 <= velocity <= 127):
        raise DataError(f"velocity must be an integer 1..127, got {velocity!r}")
    if not (isinstance(program, (int, np.integer)) and 0 <= program <= 127):
        raise DataError(f"program must be an integer 0..127, got {program!r}")
    step = _ticks_per_step(step_beats, TICKS_PER_BEAT)

    # +1 frame of silence on each side turns onsets/offsets into sign changes
    padded = np.zeros((keys.shape[0] + 2, NUM_KEYS), dtype=np.int8)
    padded[1:-1] = keys
    change = np.diff(padded, axis=0)  # row t: change entering frame t (t = 0..T)
    events: list[tuple[int, int, int]] = []  # (tick, 0 = off / 1 = on, pitch)
    for t, k in zip(*np.nonzero(change), strict=True):
        events.append((int(t) * step, 1 if change[t, k] > 0 else 0, int(k) + LOWEST_PITCH))
    events.sort()  # at one tick: offs before ons, then by pitch

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0))
    track.append(mido.Message("program_change", program=int(program), channel=0, time=0))
    now = 0
    for tick, on, pitch in events:
        kind = "note_on" if on else "note_off"
        vel = int(velocity) if on else 0
        track.append(mido.Message(kind, note=pitch, velocity=vel, channel=0, time=tick - now))
        now = tick
    end = keys.shape[0] * step
    track.append(mido.MetaMessage("end_of_track", time=end - now))
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(track)

    path = Path(path)
    with atomic_output(path) as f:
        midi.save(file=f)
    return path


def read_midi_roll(path: str | os.PathLike[str], step_beats: float = 1.0) -> np.ndarray:
    """Read a MIDI file into a float32 (T, 88) 0/1 roll sampled every ``step_beats`` beats.

    Frame ``t`` holds the keys sounding at beat ``t * step_beats`` (all tracks and channels;
    notes outside MIDI 21..108 are dropped); ``T`` reaches the file's last event. Exactly
    inverts :func:`write_midi`.
    """
    import mido

    path = Path(path)
    try:
        midi = mido.MidiFile(path)
    except FileNotFoundError:
        raise DataError(f"no such MIDI file: {path}") from None
    except (OSError, EOFError, ValueError, KeyError, IndexError) as exc:
        raise DataError(f"{path.name} is not a readable MIDI file ({exc})") from exc
    step = step_beats * midi.ticks_per_beat
    if not (math.isfinite(step) and step > 0):
        raise DataError(f"step_beats must be positive, got {step_beats!r}")

    notes: list[tuple[int, int, int]] = []  # (start tick, end tick, pitch)
    open_notes: dict[tuple[int, int], int] = {}
    tick = 0
    for msg in mido.merge_tracks(midi.tracks):
        tick += msg.time
        if msg.type not in ("note_on", "note_off"):
            continue
        key = (msg.channel, msg.note)
        if msg.type == "note_on" and msg.velocity > 0:
            open_notes.setdefault(key, tick)  # a re-strike of a held key continues it
        elif key in open_notes:
            notes.append((open_notes.pop(key), tick, msg.note))
    notes += [(start, tick, pitch) for (_, pitch), start in open_notes.items()]

    n_frames = math.ceil(tick / step - 1e-9)
    roll = np.zeros((n_frames, NUM_KEYS), dtype=np.float32)
    for start, end, pitch in notes:
        if LOWEST_PITCH <= pitch <= HIGHEST_PITCH:
            first = math.ceil(start / step - 1e-9)
            stop = math.ceil(end / step - 1e-9)
            roll[first:stop, pitch - LOWEST_PITCH] = 1.0
    return roll


def plot_piano_roll(
    roll: np.ndarray, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draw a (T, 88) 0/1 roll as a PNG: time step on x, MIDI pitch on y; returns the path.

    The pitch axis spans the notes used (two semitones of margin; the whole keyboard for an
    empty roll). Uses matplotlib's Agg canvas directly, so no GUI backend or pyplot state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = _binary_roll(roll)
    used = np.flatnonzero(keys.any(axis=0))
    lo, hi = (used[0], used[-1]) if len(used) else (0, NUM_KEYS - 1)
    lo, hi = max(0, lo - 2), min(NUM_KEYS - 1, hi + 2)
    n_frames = keys.shape[0]

    fig = Figure(figsize=(min(16.0, 4.0 + n_frames / 16), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(
        keys[:, lo : hi + 1].T,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap="Greys",
        vmin=0,
        vmax=1,
        extent=(-0.5, n_frames - 0.5, lo + LOWEST_PITCH - 0.5, hi + LOWEST_PITCH + 0.5),
    )
    ax.set_xlabel("time step")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title)
    fig.tight_layout()

    path = Path(path)
    with atomic_output(path) as f:
        fig.savefig(f, format="png")
    return path
