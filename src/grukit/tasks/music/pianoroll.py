"""Polyphonic music as 88-key piano rolls: the data set type and frame <-> roll conversion.

A data set has three splits, ``train``, ``valid`` and ``test``; each split is a list of
sequences, each sequence a float32 array of shape ``(T, 88)`` holding 0/1, ``T >= 1``.
Column ``k`` is MIDI pitch ``21 + k`` (A0 .. C8); a frame is the set of keys sounding at one
time step (a quarter note for JSB Chorales), an all-zero frame is a rest.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grukit.errors import DataError

__all__ = [
    "HIGHEST_PITCH",
    "LOWEST_PITCH",
    "NUM_KEYS",
    "SPLITS",
    "PianoRollDataset",
    "frames_to_roll",
    "roll_to_frames",
]

LOWEST_PITCH = 21
"""MIDI pitch of column 0 (A0)."""
HIGHEST_PITCH = 108
"""MIDI pitch of column 87 (C8)."""
NUM_KEYS = 88
"""Width of a piano-roll frame."""
SPLITS: tuple[str, str, str] = ("train", "valid", "test")
"""The splits every data set has, in this order."""


# --------------------------------------------------------------------------------------------
# the data set


@dataclass
class PianoRollDataset:
    """Train/valid/test piano rolls.

    ``splits`` maps each of ``train``, ``valid``, ``test`` to a list of float32 arrays of shape
    ``(T, 88)`` holding 0/1 (``T >= 1``; column ``k`` is MIDI pitch ``21 + k``). Construction
    checks this and converts other numeric 0/1 arrays to contiguous float32. ``source`` says
    where the data came from (a path, or the corpus); ``metadata`` holds optional extra facts
    (for the Bach corpus: chorale names per split, skipped and duplicate chorales).
    """

    name: str
    splits: dict[str, list[np.ndarray]]
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.splits, dict):
            raise DataError(f"{self.name}: splits must be a dict, got {type(self.splits).__name__}")
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise DataError(
                f"{self.name}: missing split {missing[0]!r}; a data set has splits "
                f"{', '.join(SPLITS)}"
            )
        extra = sorted(set(self.splits) - set(SPLITS), key=str)
        if extra:
            raise DataError(
                f"{self.name}: unexpected split {extra[0]!r}; a data set has splits "
                f"{', '.join(SPLITS)}"
            )
        checked: dict[str, list[np.ndarray]] = {}
        for split in SPLITS:
            seqs = self.splits[split]
            if not isinstance(seqs, (list, tuple)):
                raise DataError(
                    f"{self.name}: split {split!r} must be a list of (T, 88) arrays, "
                    f"got {type(seqs).__name__}"
                )
            checked[split] = [
                _check_roll(roll, f"{self.name}: split {split!r}, sequence {i}")
                for i, roll in enumerate(seqs)
            ]
        self.splits = checked

    def num_sequences(self, split: str | None = None) -> int:
        """Number of sequences in ``split`` (all splits when None)."""
        return sum(len(self.splits[s]) for s in self._names(split))

    def num_frames(self, split: str | None = None) -> int:
        """Total number of frames (time steps) in ``split`` (all splits when None)."""
        return sum(int(r.shape[0]) for s in self._names(split) for r in self.splits[s])

    def summary(self) -> str:
        """One line per split: sequence count, frame count, min/mean/max length, notes/frame."""
        lines = [f"{self.name} ({self.source})"]
        for split in SPLITS:
            rolls = self.splits[split]
            if rolls:
                lengths = np.array([r.shape[0] for r in rolls])
                notes = sum(float(r.sum()) for r in rolls) / lengths.sum()
                detail = (
                    f"length {lengths.min()}/{lengths.mean():.1f}/{lengths.max()} "
                    f"(min/mean/max), {notes:.2f} notes per frame"
                )
            else:
                detail = "empty"
            lines.append(
                f"  {split:<5} {len(rolls):5d} sequences {self.num_frames(split):7d} frames, "
                + detail
            )
        skipped = self.metadata.get("skipped")
        duplicates = self.metadata.get("duplicates")
        if skipped is not None or duplicates is not None:
            lines.append(
                f"  dropped {len(skipped or {})} that failed to parse and "
                f"{len(duplicates or {})} duplicates"
            )
        return "\n".join(lines)

    def _names(self, split: str | None) -> Sequence[str]:
        if split is None:
            return SPLITS
        if split not in self.splits:
            raise KeyError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        return (split,)


def _check_roll(roll: Any, where: str) -> np.ndarray:
    """``roll`` as a contiguous float32 (T, 88) 0/1 array, or DataError naming ``where``."""
    if not isinstance(roll, np.ndarray):
        raise DataError(f"{where}: expected a (T, 88) array, got {type(roll).__name__}")
    if roll.ndim != 2 or roll.shape[1] != NUM_KEYS:
        raise DataError(
            f"{where}: expected a (T, {NUM_KEYS}) piano roll over MIDI {LOWEST_PITCH}-"
            f"{HIGHEST_PITCH}, got shape {roll.shape}"
        )
    if roll.shape[0] == 0:
        raise DataError(f"{where}: empty sequence (0 frames); every sequence needs >= 1 frame")
    if not (roll.dtype == np.bool_ or np.issubdtype(roll.dtype, np.number)):
        raise DataError(f"{where}: expected numbers 0/1, got dtype {roll.dtype}")
    bad = (roll != 0) & (roll != 1)
    if bad.any():
        t, k = (int(x) for x in np.argwhere(bad)[0])
        raise DataError(
            f"{where}, frame {t}: piano-roll values must be 0 or 1, found {roll[t, k]!r} "
            f"at column {k} (MIDI {LOWEST_PITCH + k})"
        )
    return np.ascontiguousarray(roll, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# frames <-> rolls


def frames_to_roll(frames: Iterable[Iterable[Any]], *, where: str = "sequence") -> np.ndarray:
    """List of frames (each an iterable of MIDI pitches 21..108) -> float32 (T, 88) 0/1 roll.

    Pitches must be integers (Python or numpy, or integral floats); an empty frame is a rest.
    Raises DataError naming ``where`` and the frame index for a bad pitch or an empty sequence.
    """
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Iterable):
        raise DataError(f"{where}: expected a list of frames, got {type(frames).__name__}")
    rows: list[list[int]] = []
    for t, frame in enumerate(frames):
        if isinstance(frame, (str, bytes, dict)) or not isinstance(frame, Iterable):
            raise DataError(
                f"{where}, frame {t}: expected a tuple of MIDI pitches, got {type(frame).__name__}"
            )
        rows.append([_pitch(p, f"{where}, frame {t}") for p in frame])
    if not rows:
        raise DataError(f"{where}: empty sequence (0 frames); every sequence needs >= 1 frame")
    roll = np.zeros((len(rows), NUM_KEYS), dtype=np.float32)
    for t, pitches in enumerate(rows):
        if pitches:
            roll[t, np.asarray(pitches) - LOWEST_PITCH] = 1.0
    return roll


def _pitch(value: Any, where: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise DataError(f"{where}: pitch must be an integer MIDI number, got {value!r}")
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer()
    )
    if integral:
        pitch = int(value)
    else:
        shown = repr(value) if isinstance(value, numbers.Number) else type(value).__name__
        raise DataError(f"{where}: pitch must be an integer MIDI number, got {shown}")
    if not LOWEST_PITCH <= pitch <= HIGHEST_PITCH:
        raise DataError(
            f"{where}: pitch {pitch} is outside the piano range "
            f"{LOWEST_PITCH}..{HIGHEST_PITCH} (MIDI)"
        )
    return pitch


def roll_to_frames(roll: np.ndarray) -> list[tuple[int, ...]]:
    """(T, 88) 0/1 roll -> list of T frames, each a sorted tuple of MIDI pitches (ints)."""
    roll = _check_roll(np.asarray(roll), "roll")
    return [tuple(int(k) + LOWEST_PITCH for k in np.flatnonzero(row)) for row in roll]
