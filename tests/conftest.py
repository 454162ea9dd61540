"""Shared fixtures: tiny synthetic polyphonic data sets in the Boulanger-Lewandowski format,
and one that pins the fused kernels to every thread torch allows."""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# A repeating progression in a small pitch range: the next chord follows from the current one,
# so even a tiny recurrent model can learn more than the keys' base rates.
PROGRESSION = ((60, 64, 67), (62, 65, 69), (64, 67, 71), (65, 69, 72), (67, 71, 74))


def write_bl_pickle(
    path: Path,
    *,
    seed: int = 0,
    sizes: tuple[int, int, int] = (12, 4, 4),
    lengths: tuple[int, int] = (6, 20),
) -> Path:
    """Write a ``{'train','valid','test'} -> sequences -> frames -> pitch tuples`` pickle.

    Each sequence walks :data:`PROGRESSION` from a random chord; some frames add a bass note
    (4 notes) and some keep only the chord's root (1 note). Plain lists/tuples of ints only.
    """
    rng = random.Random(seed)
    data: dict[str, list[list[tuple[int, ...]]]] = {}
    for split, count in zip(("train", "valid", "test"), sizes, strict=True):
        sequences = []
        for _ in range(count):
            start = rng.randrange(len(PROGRESSION))
            frames = []
            for t in range(rng.randint(*lengths)):
                chord = list(PROGRESSION[(start + t) % len(PROGRESSION)])
                if rng.random() < 0.3:
                    chord.insert(0, 48 + (start + t) % len(PROGRESSION))
                elif rng.random() < 0.2:
                    chord = chord[:1]
                frames.append(tuple(chord))
            sequences.append(frames)
        data[split] = sequences
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


@pytest.fixture(scope="session")
def make_bl_pickle() -> Callable[..., Path]:
    """``make_bl_pickle(path, seed=..., sizes=..., lengths=...)`` writes a tiny data set."""
    return write_bl_pickle


@pytest.fixture(scope="session")
def tiny_pickle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12/4/4 sequences of 6-20 frames, 1-4 notes per frame (MIDI 48-74), seed 0."""
    return write_bl_pickle(tmp_path_factory.mktemp("data") / "tiny.pickle")


@pytest.fixture
def restore_threads():
    """Restores torch's thread count afterwards, and meanwhile has the fused kernels use every
    thread torch allows (thread policy "all"), so that a test that sets 2 threads runs the
    kernels' 2-thread paths rather than whatever the adaptive policy would pick."""
    import grukit.fused

    n = torch.get_num_threads()
    fused = grukit.fused.available()
    if fused:
        grukit.fused.set_thread_policy("all")
    yield
    torch.set_num_threads(n)
    if fused:
        grukit.fused.set_thread_policy("adaptive")
