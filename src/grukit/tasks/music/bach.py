"""J.S. Bach's chorales from the corpus inside music21, as JSB-Chorales-style piano rolls.

This is grukit's built-in polyphonic data set (``load_polyphonic("bach")``): it needs no
network, because the scores ship with the music21 package. Every ``bach/bwv*`` score of the
corpus (MusicXML, plus a few Humdrum files; the Riemenschneider roman-numeral analyses and the
keyboard prelude BWV 846 are not chorales) becomes one sequence, built the way Boulanger-
Lewandowski et al. (2012) built JSB Chorales:

* **Voices.** The four vocal parts only: a score with exactly four parts is taken whole, else
  the parts named Soprano/Alto/Tenor/Bass (instrumental obbligato parts such as trumpets,
  horns or timpani are left out; JSB has at most four notes per frame). A score without them
  is skipped.
* **Frames.** Repeats are written out (``expandRepeats``). Frame ``t`` is the set of pitches
  of all voices sounding at quarter-note time ``t`` (a note covering ``[on, off)`` sounds in
  frames ``ceil(on) .. ceil(off) - 1``, so eighth-note passing tones between beats vanish);
  a frame where all voices rest is all zeros.
* **Key and register.** Each chorale is transposed so its tonic is C (C major or C minor,
  by the nearest interval, -6..+5 semitones), then raised one octave.

What the real JSB data says (``/work/shared/data/polyphonic``, 382 chorales), and how it was
checked: the lowest note of the last frame is C in 356 chorales and G in 21, the first frame's
bass is C in 333, and the pitch-class histogram has both E and Eb strongly, so JSB is
transposed to a common tonic C, majors to C major and minors to C minor. Matching each
music21 chorale against every JSB sequence over all transpositions showed the rule: the shift
is always the nearest transposition of the tonic to C *plus 12*, i.e. JSB sits one octave above
the written pitch (its top voice averages MIDI 83, B5), and repeats are written out (90 of the
136 matched chorales with repeat signs matched the expanded form). To name the tonic we take
the final bass note, except when that note is the dominant of the key music21 finds
(``analyze('key')``, Aarden-Essen weights) -- a half or Phrygian close -- where we take the
found tonic; on the first 322 matches this agreed with JSB's transposition for 304, music21's
key finder alone for 285, the final bass note alone for 300. With the rolls this module makes,
286 of the 401 chorales match a JSB sequence (>= 80 % of frames identical at the best
transposition) and 268 of those at the same transposition. The remaining differences are
JSB's: it repeats the final chord in one extra frame in about two thirds of the chorales, and
has single frames where a note changes a beat late; they come from its MIDI source and are not
imitated. (Transposition makes the key of a chorale carry no information, as in JSB; the
original key is not kept.)

Duplicates (the same roll after transposition: one harmonisation used in two works, or two
editions of it) are dropped, as are scores that fail to parse; both are listed in
``metadata``. The split is by a hash of the corpus path (``bach/bwv269.mxl``): about 60/20/20 %
train/valid/test, the same for every run and every machine, independent of parse order or of
other chorales.

Parsing takes about 50 s on one core, so the result is cached as ``.npz`` in the cache folder
(``cache_dir``, ``$GRUKIT_CACHE`` or ``~/.cache/grukit``), keyed by music21's version and
:data:`FORMAT_VERSION`; loading the cache takes well under a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from grukit.data.download import atomic_output, default_cache_dir
from grukit.errors import DataError
from grukit.tasks.music.pianoroll import (
    HIGHEST_PITCH,
    LOWEST_PITCH,
    NUM_KEYS,
    SPLITS,
    PianoRollDataset,
)

__all__ = [
    "FORMAT_VERSION",
    "OCTAVE_SHIFT",
    "ParsedChorales",
    "build_dataset",
    "cache_path",
    "chorale_key",
    "chorale_paths",
    "chorale_to_roll",
    "load_bach",
    "parse_chorales",
    "split_of",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the rolls this module makes change, so old caches are not used."""
OCTAVE_SHIFT = 12
"""Semitones added after transposing to C, to sit in JSB Chorales' register."""
SPLIT_BOUNDS = (0.6, 0.8)
"""Hash fraction below 0.6 -> train, below 0.8 -> valid, else test."""

_SCORE_SUFFIXES = {".mxl": 0, ".xml": 1, ".musicxml": 1, ".krn": 2}  # preferred first
_NOT_CHORALES = {"bwv846"}  # The Well-Tempered Clavier, prelude in C: a keyboard piece
_VOICE = re.compile(r"\s*(soprano|alto|tenor|bass)\b", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# corpus files


def chorale_paths() -> list[Path]:
    """The chorale scores of music21's ``bach`` corpus folder, one file per chorale.

    Where a chorale exists in several formats, the MusicXML file is taken. Sorted by
    :func:`chorale_key`.
    """
    from music21 import corpus

    best: dict[str, Path] = {}
    for path in corpus.getComposer("bach"):
        path = Path(path)
        if path.suffix.lower() not in _SCORE_SUFFIXES or not path.name.startswith("bwv"):
            continue
        stem = path.name[: -len(path.suffix)]
        if stem in _NOT_CHORALES:
            continue
        old = best.get(stem)
        if old is None or _SCORE_SUFFIXES[path.suffix.lower()] < _SCORE_SUFFIXES[old.suffix]:
            best[stem] = path
    return sorted(best.values(), key=chorale_key)


def chorale_key(path: str | os.PathLike[str]) -> str:
    """Stable name of a corpus file: ``<folder>/<file name>``, e.g. ``bach/bwv269.mxl``."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def resolve_chorale(spec: str | os.PathLike[str]) -> Path:
    """A file path, or a corpus name such as ``bach/bwv269`` (MusicXML preferred), as a Path."""
    path = Path(spec)
    if path.is_file():
        return path
    from music21 import corpus

    try:
        found = corpus.getWork(str(spec))
    except corpus.CorpusException:
        found = []
    paths = found if isinstance(found, list) else [found]
    paths = [Path(p) for p in paths if Path(p).suffix.lower() in _SCORE_SUFFIXES]
    if not paths:
        raise DataError(f"no score {str(spec)!r} in the music21 corpus")
    return min(paths, key=lambda p: _SCORE_SUFFIXES[p.suffix.lower()])


def split_of(key: str) -> str:
    """``train``, ``valid`` or ``test`` for a chorale key, from a hash of the key alone."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < SPLIT_BOUNDS[0]:
        return "train"
    return "valid" if u < SPLIT_BOUNDS[1] else "test"


# --------------------------------------------------------------------------------------------
# one score -> one roll


class _NotAChoraleError(Exception):
    """A score that is not a usable chorale (the message says why)."""


def _vocal_parts(score: Any) -> list[Any]:
    parts = list(score.parts)
    if len(parts) == 4:
        return parts
    voices = [p for p in parts if p.partName and _VOICE.match(str(p.partName))]
    if len(voices) < 4:
        names = ", ".join(str(p.partName) for p in parts)
        raise _NotAChoraleError(f"not a four-part chorale (parts: {names})")
    return voices


def _notes(parts: Iterable[Any]) -> list[tuple[Fraction, Fraction, int]]:
    """(onset, offset, MIDI pitch) in quarter notes, exact, for every sounding note."""
    out = []
    for part in parts:
        for n in part.flatten().notes:
            length = Fraction(n.quarterLength)
            if length <= 0 or n.duration.isGrace:
                continue
            onset = Fraction(n.offset)
            for pitch in n.pitches:
                out.append((onset, onset + length, int(round(pitch.ps))))
    return out


def chorale_to_roll(score: Any) -> np.ndarray:
    """A parsed music21 chorale -> float32 (T, 88) 0/1 roll in quarter-note frames.

    Vocal parts only, repeats expanded, transposed to C major/minor and raised an octave
    (the module docstring says why). Raises DataError if the score is not a usable chorale.
    """
    try:
        return _chorale_to_roll(score)
    except _NotAChoraleError as exc:
        raise DataError(str(exc)) from None


def _chorale_to_roll(score: Any) -> np.ndarray:
    from music21 import stream

    voices = stream.Score(_vocal_parts(score))
    played = voices
    if _has_repeats(voices):
        try:
            played = voices.expandRepeats()
        except Exception:  # music21 raises ExpanderException for irregular repeat marks
            played = voices
    notes = _notes(played.parts)
    if not notes:
        raise _NotAChoraleError("no notes")
    n_frames = math.ceil(max(off for _, off, _ in notes))
    roll = np.zeros((n_frames, 128), dtype=np.uint8)
    for onset, offset, pitch in notes:
        if not 0 <= pitch < 128:
            raise _NotAChoraleError(f"pitch {pitch} is not a MIDI note")
        roll[math.ceil(onset) : math.ceil(offset), pitch] = 1
    sounding = np.flatnonzero(roll.any(axis=1))
    if len(sounding) == 0:
        raise _NotAChoraleError("no note sounds on a quarter-note beat")
    final_bass = int(np.flatnonzero(roll[sounding[-1]])[0]) % 12
    tonic = final_bass
    key = _analysed_tonic(voices)
    if key is not None and final_bass == (key + 7) % 12:  # ends on the dominant
        tonic = key
    shift = OCTAVE_SHIFT + ((-tonic + 6) % 12 - 6)
    pitches = np.flatnonzero(roll.any(axis=0)) + shift
    if pitches.min() < LOWEST_PITCH or pitches.max() > HIGHEST_PITCH:
        raise _NotAChoraleError(
            f"pitches {pitches.min()}..{pitches.max()} after transposition leave the piano "
            f"range {LOWEST_PITCH}..{HIGHEST_PITCH}"
        )
    lo = LOWEST_PITCH - shift
    return roll[:, lo : lo + NUM_KEYS].astype(np.float32)


def _has_repeats(score: Any) -> bool:
    """Whether the score has repeat barlines or repeat expressions (D.C., segno, ...)."""
    from music21 import bar, repeat

    for _ in score.recurse().getElementsByClass(repeat.RepeatExpression):
        return True
    return any(isinstance(b, bar.Repeat) for b in score.recurse().getElementsByClass(bar.Barline))


def _analysed_tonic(score: Any) -> int | None:
    """Pitch class of the key music21 finds (Aarden-Essen) in the score, or None."""
    try:
        key = score.analyze("key")
    except Exception:  # key finding is advisory; the final bass note decides otherwise
        return None
    return int(key.tonic.pitchClass)


# --------------------------------------------------------------------------------------------
# many scores


@dataclass
class ParsedChorales:
    """Rolls by chorale key, the keys that could not be used with the reason, parse time (s)."""

    rolls: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def parse_chorales(
    paths: Sequence[str | os.PathLike[str]], *, progress: bool = False
) -> ParsedChorales:
    """Parse chorale files (paths, or corpus names such as ``bach/bwv269``) into rolls.

    Files that fail to parse or are not four-part chorales land in ``skipped`` with the
    reason; nothing is raised for them. ``progress`` shows a tqdm bar.
    """
    from music21 import converter
    from tqdm.auto import tqdm

    result = ParsedChorales()
    start = time.perf_counter()
    for spec in tqdm(
        paths, desc="parsing Bach chorales (once)", unit="chorale", disable=not progress
    ):
        try:
            path = resolve_chorale(spec)
        except Exception as exc:  # corpus look-up of an unknown name
            result.skipped[str(spec)] = f"not found: {exc}"
            continue
        key = chorale_key(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                score = converter.parse(path, forceSource=True)
            result.rolls[key] = _chorale_to_roll(score)
        except _NotAChoraleError as exc:
            result.skipped[key] = str(exc)
        except Exception as exc:  # music21 raises many types for a score it cannot read
            result.skipped[key] = f"failed to parse: {type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - start
    return result


def build_dataset(parsed: ParsedChorales, *, source: str = "music21 corpus") -> PianoRollDataset:
    """Drop duplicate rolls (keeping the first key in sorted order) and split by key hash.

    Sequences in each split are in key order. ``metadata`` holds ``names`` (keys per split),
    ``skipped`` (key -> reason) and ``duplicates`` (dropped key -> kept key).
    """
    seen: dict[bytes, str] = {}
    duplicates: dict[str, str] = {}
    splits: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    names: dict[str, list[str]] = {s: [] for s in SPLITS}
    for key in sorted(parsed.rolls):
        roll = parsed.rolls[key]
        digest = hashlib.sha256(
            np.asarray(roll.shape, dtype=np.int64).tobytes() + roll.astype(np.uint8).tobytes()
        ).digest()
        if digest in seen:
            duplicates[key] = seen[digest]
            continue
        seen[digest] = key
        split = split_of(key)
        splits[split].append(roll)
        names[split].append(key)
    for split in SPLITS:
        if not splits[split]:
            raise DataError(
                f"the Bach chorales give no {split!r} sequences ({len(parsed.rolls)} parsed, "
                f"{len(parsed.skipped)} skipped): too few chorales to split"
            )
    metadata = {
        "names": names,
        "skipped": dict(parsed.skipped),
        "duplicates": duplicates,
        "parse_seconds": parsed.seconds,
    }
    return PianoRollDataset(name="bach", splits=splits, source=source, metadata=metadata)


# --------------------------------------------------------------------------------------------
# cache


def _music21_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("music21")
    except PackageNotFoundError:  # pragma: no cover - music21 imported from a source tree
        import music21

        return str(music21.__version__)


def cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`load_bach` keeps the parsed corpus for this music21 version."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    version = re.sub(r"[^0-9A-Za-z.]+", "_", _music21_version())
    return root / "bach" / f"chorales-music21-{version}-v{FORMAT_VERSION}.npz"


def _save(dataset: PianoRollDataset, path: Path) -> None:
    keys, splits, rolls = [], [], []
    for split in SPLITS:
        keys += dataset.metadata["names"][split]
        splits += [split] * len(dataset.splits[split])
        rolls += dataset.splits[split]
    meta = {
        "format_version": FORMAT_VERSION,
        "music21_version": _music21_version(),
        "skipped": dataset.metadata["skipped"],
        "duplicates": dataset.metadata["duplicates"],
        "parse_seconds": dataset.metadata["parse_seconds"],
    }
    with atomic_output(path) as f:
        np.savez_compressed(
            f,
            rolls=np.concatenate(rolls).astype(np.uint8),
            lengths=np.array([len(r) for r in rolls], dtype=np.int64),
            keys=np.array(keys, dtype=str),
            splits=np.array(splits, dtype=str),
            meta=np.array(json.dumps(meta)),
        )


def _load(path: Path) -> PianoRollDataset:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {meta.get('format_version')}")
        if meta.get("music21_version") != _music21_version():
            raise ValueError(f"music21 version {meta.get('music21_version')}")
        rolls, lengths = z["rolls"], z["lengths"]
        keys, split_of_seq = z["keys"].tolist(), z["splits"].tolist()
    if rolls.ndim != 2 or rolls.shape[1] != NUM_KEYS or lengths.sum() != rolls.shape[0]:
        raise ValueError("inconsistent arrays")
    if not len(keys) == len(split_of_seq) == len(lengths):
        raise ValueError("inconsistent arrays")
    splits: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    names: dict[str, list[str]] = {s: [] for s in SPLITS}
    for key, split, seq in zip(
        keys, split_of_seq, np.split(rolls, np.cumsum(lengths)[:-1]), strict=True
    ):
        splits[split].append(seq.astype(np.float32))
        names[split].append(key)
    metadata = {
        "names": names,
        "skipped": meta["skipped"],
        "duplicates": meta["duplicates"],
        "parse_seconds": meta["parse_seconds"],
        "cache": str(path),
    }
    return PianoRollDataset(
        name="bach", splits=splits, source=f"music21 corpus (cached in {path})", metadata=metadata
    )


def load_bach(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    refresh: bool = False,
) -> PianoRollDataset:
    """The Bach chorales of music21's corpus as a train/valid/test :class:`PianoRollDataset`.

    The first call parses the corpus (about 50 s, with a tqdm bar unless ``progress`` is
    False) and caches the rolls (see :func:`cache_path`); later calls read the cache. A cache
    that cannot be read is rebuilt; ``refresh`` forces a rebuild.
    """
    path = cache_path(cache_dir)
    if path.is_file() and not refresh:
        try:
            return _load(path)
        except Exception as exc:  # OSError, ValueError, BadZipFile, KeyError, DataError, ...
            log.warning("rebuilding the Bach chorale cache %s: %s", path, exc)
    try:
        import music21  # noqa: F401
    except ImportError as exc:
        raise DataError(
            "the 'bach' data set needs the music21 package (pip install music21)"
        ) from exc
    parsed = parse_chorales(chorale_paths(), progress=progress)
    dataset = build_dataset(parsed, source="music21 corpus")
    log.info(
        "parsed %d Bach chorales in %.1f s: %d skipped, %d duplicates dropped",
        len(parsed.rolls) + len(parsed.skipped),
        parsed.seconds,
        len(parsed.skipped),
        len(dataset.metadata["duplicates"]),
    )
    try:
        _save(dataset, path)
        dataset.metadata["cache"] = str(path)
    except OSError as exc:  # a read-only cache folder costs time, not correctness
        log.warning("could not cache the parsed Bach chorales in %s: %s", path, exc)
    return dataset
