"""The polyphonic-music wing: piano-roll data, its files and downloads, the Bach chorales of
music21, MIDI and piano-roll pictures, and the next-frame prediction task."""

from grukit.tasks.music.pianoroll import (
    HIGHEST_PITCH,
    LOWEST_PITCH,
    NUM_KEYS,
    SPLITS,
    PianoRollDataset,
    frames_to_roll,
    roll_to_frames,
)
from grukit.tasks.music.polyphonic import (
    DATASET_NAMES,
    RestrictedUnpickler,
    load_mat,
    load_pickle,
    load_polyphonic,
    normalise_name,
)

__all__ = [
    "DATASET_NAMES",
    "HIGHEST_PITCH",
    "LOWEST_PITCH",
    "NUM_KEYS",
    "SPLITS",
    "PianoRollDataset",
    "RestrictedUnpickler",
    "frames_to_roll",
    "load_mat",
    "load_pickle",
    "load_polyphonic",
    "normalise_name",
    "roll_to_frames",
]
