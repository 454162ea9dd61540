"""Sequence-to-sequence data: parallel TSV files and named synthetic benchmarks.

Every loader returns a :class:`ParallelData`: ``(source, target)`` string pairs for the
``train``, ``valid`` and ``test`` splits. Tokenisation (``level`` char or word) and the
vocabularies come later, in the task (:mod:`grukit.vocab` holds PAD/BOS/EOS/UNK).

Named benchmarks (:data:`SYNTHETIC`), generated from a seed, nothing downloaded:

* ``addition``: integer addition as in the Keras example ``addition_rnn.py``: ``"535+61"`` ->
  ``"596"``, each operand drawn with 1 to ``digits`` digits (the length first, then the
  digits, as Keras draws them). A question and its commuted twin (``61+535``) are one pair, so
  no question of valid or test is in train in either order.
* ``reverse``: a random string of ``min_length``-``max_length`` letters over an alphabet of
  ``alphabet_size`` -> the same string reversed. The first target token depends on the last
  source token, so a fixed-size summary must carry the whole string; attention reads it back.

TSV (``source<TAB>target`` per line, UTF-8, blank lines skipped): one file, split into
train/valid/test by fractions after a seeded shuffle, or a folder with ``train.tsv``,
``valid.tsv`` and ``test.tsv``. A line without a tab, an empty source, bytes that are not UTF-8
or an empty file are a :class:`~grukit.errors.DataError` naming the file and the line (or the
byte offset).
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grukit.errors import DataError

__all__ = [
    "SPLITS",
    "SYNTHETIC",
    "ParallelData",
    "addition_pairs",
    "load_parallel",
    "read_tsv",
    "reverse_pairs",
]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: The named benchmarks :func:`load_parallel` generates.
SYNTHETIC: tuple[str, ...] = ("addition", "reverse")

#: larger TSV files are refused (every pair is held in memory)
MAX_TSV_BYTES = 1 << 30

Pair = tuple[str, str]


@dataclass
class ParallelData:
    """``(source, target)`` pairs per split; ``text`` is True for real text (TSV), where BLEU
    is reported, and False for the synthetic benchmarks."""

    name: str
    splits: dict[str, list[Pair]]
    text: bool

    def __post_init__(self) -> None:
        for split in SPLITS:
            if not self.splits.get(split):
                raise DataError(f"{self.name}: the {split} split holds no pairs")


# ---------------------------------------------------------------------------- TSV


def read_tsv(path: str | os.PathLike[str]) -> list[Pair]:
    """The ``(source, target)`` pairs of a TSV file (split at the first tab of each line)."""
    from grukit.io import read_data_file

    path = Path(path)
    text = read_data_file(
        path, expected="a TSV file of source<TAB>target lines", max_bytes=MAX_TSV_BYTES
    )
    assert isinstance(text, str)
    pairs: list[Pair] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        if "\t" not in line:
            raise DataError(
                f"{path}, line {number}: no tab; expected source<TAB>target, got {line[:60]!r}"
            )
        source, target = line.split("\t", 1)
        if not source.strip():
            raise DataError(f"{path}, line {number}: the source (before the tab) is empty")
        pairs.append((source, target))
    if not pairs:
        raise DataError(f"{path}: the file holds no source<TAB>target lines")
    return pairs


def _split_pairs(
    pairs: list[Pair], valid_fraction: float, test_fraction: float, seed: int, name: str
) -> dict[str, list[Pair]]:
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_valid = round(valid_fraction * len(pairs))
    n_test = round(test_fraction * len(pairs))
    if len(pairs) - n_valid - n_test < 1 or n_valid < 1 or n_test < 1:
        raise DataError(
            f"{name}: {len(pairs)} pairs are too few for a train, a valid and a test split "
            f"with fractions {valid_fraction} and {test_fraction}"
        )
    shuffled = [pairs[i] for i in order]
    return {
        "valid": shuffled[:n_valid],
        "test": shuffled[n_valid : n_valid + n_test],
        "train": shuffled[n_valid + n_test :],
    }


# ---------------------------------------------------------------------------- synthetic


def _unique_draws(
    draw: object, key: object, total: int, rng: np.random.Generator, what: str
) -> list[Pair]:
    """``total`` pairs from ``draw(rng)`` whose ``key`` differ (a pair and its duplicate are
    never in two splits)."""
    seen: set[object] = set()
    pairs: list[Pair] = []
    attempts = 0
    while len(pairs) < total:
        attempts += 1
        if attempts > 50 * total + 1000:
            raise DataError(f"{what}: cannot draw {total} distinct pairs; ask for fewer")
        pair = draw(rng)  # type: ignore[operator]
        k = key(pair)  # type: ignore[operator]
        if k not in seen:
            seen.add(k)
            pairs.append(pair)
    return pairs


def _split_counts(pairs: list[Pair], sizes: Sequence[int]) -> dict[str, list[Pair]]:
    out, start = {}, 0
    for split, n in zip(SPLITS, sizes, strict=True):
        out[split] = pairs[start : start + n]
        start += n
    return out


def addition_pairs(
    sizes: Sequence[int], *, digits: int = 3, seed: int = 0
) -> dict[str, list[Pair]]:
    """``{"train", "valid", "test"}`` pairs ``("a+b", str(a + b))`` of ``sizes`` each, the
    operands of 1 to ``digits`` digits; no unordered pair ``{a, b}`` is in two splits."""

    def operand(rng: np.random.Generator) -> int:
        length = int(rng.integers(1, digits + 1))
        return int("".join(str(d) for d in rng.integers(0, 10, size=length)))

    def draw(rng: np.random.Generator) -> Pair:
        a, b = operand(rng), operand(rng)
        return f"{a}+{b}", str(a + b)

    def key(pair: Pair) -> tuple[int, int]:
        a, b = (int(v) for v in pair[0].split("+"))
        return (min(a, b), max(a, b))

    rng = np.random.default_rng(seed)
    pairs = _unique_draws(draw, key, sum(sizes), rng, f"addition of {digits}-digit numbers")
    return _split_counts(pairs, sizes)


def reverse_pairs(
    sizes: Sequence[int],
    *,
    min_length: int = 20,
    max_length: int = 40,
    alphabet_size: int = 10,
    seed: int = 0,
) -> dict[str, list[Pair]]:
    """``{"train", "valid", "test"}`` pairs ``(s, s[::-1])`` of ``sizes`` each, ``s`` of
    ``min_length``-``max_length`` letters drawn uniformly from the first ``alphabet_size``
    lowercase letters; every source is distinct."""
    letters = np.array(list(string.ascii_lowercase[:alphabet_size]))

    def draw(rng: np.random.Generator) -> Pair:
        length = int(rng.integers(min_length, max_length + 1))
        s = "".join(letters[rng.integers(0, alphabet_size, size=length)])
        return s, s[::-1]

    rng = np.random.default_rng(seed)
    pairs = _unique_draws(draw, lambda p: p[0], sum(sizes), rng, "reverse")
    return _split_counts(pairs, sizes)


# ---------------------------------------------------------------------------- loading


def load_parallel(
    data: str,
    *,
    train_pairs: int = 50_000,
    eval_pairs: int = 5_000,
    digits: int = 3,
    min_length: int = 20,
    max_length: int = 40,
    alphabet_size: int = 10,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ParallelData:
    """A named benchmark (``train_pairs`` to train, ``eval_pairs`` each to validate and test),
    a TSV file (split by fractions after a shuffle with ``seed``) or a folder of
    ``train.tsv``/``valid.tsv``/``test.tsv``."""
    sizes = (train_pairs, eval_pairs, eval_pairs)
    if data == "addition":
        name = f"addition ({digits} digits)"
        return ParallelData(name, addition_pairs(sizes, digits=digits, seed=seed), text=False)
    if data == "reverse":
        splits = reverse_pairs(
            sizes, min_length=min_length, max_length=max_length,
            alphabet_size=alphabet_size, seed=seed,
        )  # fmt: skip
        return ParallelData(f"reverse ({min_length}-{max_length})", splits, text=False)
    path = Path(data)
    if path.is_dir():
        missing = [f"{s}.tsv" for s in SPLITS if not (path / f"{s}.tsv").is_file()]
        if missing:
            raise DataError(
                f"{path}: a folder of parallel data needs train.tsv, valid.tsv and test.tsv; "
                f"missing {', '.join(missing)}"
            )
        return ParallelData(path.name, {s: read_tsv(path / f"{s}.tsv") for s in SPLITS}, True)
    if not path.exists():
        raise DataError(
            f"{data}: no such file or folder (expected {', '.join(SYNTHETIC)}, a TSV file or a "
            "folder with train.tsv, valid.tsv, test.tsv)"
        )
    pairs = read_tsv(path)
    return ParallelData(
        path.stem, _split_pairs(pairs, valid_fraction, test_fraction, seed, str(path)), True
    )
