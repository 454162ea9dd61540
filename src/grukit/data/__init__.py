"""Data sets for grukit: polyphonic music as 88-key piano rolls (and their downloads)."""

from grukit.data.bach import load_bach
from grukit.data.download import REGISTRY, DatasetEntry, default_cache_dir, fetch
from grukit.data.polyphonic import (
    DATASET_NAMES,
    HIGHEST_PITCH,
    LOWEST_PITCH,
    NUM_KEYS,
    SPLITS,
    PianoRollDataset,
    frames_to_roll,
    load_mat,
    load_pickle,
    load_polyphonic,
    roll_to_frames,
)

__all__ = [
    "DATASET_NAMES",
    "HIGHEST_PITCH",
    "LOWEST_PITCH",
    "NUM_KEYS",
    "REGISTRY",
    "SPLITS",
    "DatasetEntry",
    "PianoRollDataset",
    "default_cache_dir",
    "fetch",
    "frames_to_roll",
    "load_bach",
    "load_mat",
    "load_pickle",
    "load_polyphonic",
    "roll_to_frames",
]
