"""Token vocabularies for the text tasks (character language model, sequence-to-sequence).

A :class:`Vocabulary` maps tokens (characters, bytes or words) to ids ``0..len-1``. The special
tokens come first, in a fixed order, so that their ids are the same in every vocabulary that
has them: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3 (each only when asked for; the
character LM asks for ``<unk>`` alone, so there it is id 0). The ordinary tokens follow in
sorted order, which makes a vocabulary built from the same text the same whatever the order of
the text.

Unknown tokens (not seen when the vocabulary was built) follow one documented rule, chosen per
call: ``unknown="unk"`` maps each to ``<unk>`` (evaluation text: the model is charged for it
like for any other token), ``unknown="error"`` refuses with the tokens listed (a prime string,
a sentence to translate).

Tokenisation (:func:`tokenize`): ``"char"`` splits a string into its characters, ``"word"`` on
whitespace, ``"byte"`` reads UTF-8 bytes (256 tokens, nothing is ever unknown).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from grukit.errors import DataError

__all__ = ["LEVELS", "SPECIALS", "Vocabulary", "detokenize", "tokenize"]

#: Every special token, in id order.
SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
#: How text is cut into tokens.
LEVELS: tuple[str, ...] = ("char", "word", "byte")


def tokenize(text: str | bytes, level: str) -> list[str] | list[int]:
    """``text`` as tokens of ``level``: characters, whitespace-separated words, or byte values."""
    if level == "char":
        return list(text) if isinstance(text, str) else list(text.decode("utf-8"))
    if level == "word":
        return (text if isinstance(text, str) else text.decode("utf-8")).split()
    if level == "byte":
        return list(text.encode("utf-8") if isinstance(text, str) else text)
    raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")


def detokenize(tokens: Sequence[Any], level: str) -> str:
    """The text of ``tokens`` (the inverse of :func:`tokenize`; bytes decode with replacement
    characters where a sample cut a multi-byte character)."""
    if level == "char":
        return "".join(tokens)
    if level == "word":
        return " ".join(tokens)
    if level == "byte":
        return bytes(tokens).decode("utf-8", errors="replace")
    raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")


class Vocabulary:
    """Tokens <-> ids, specials first (see the module docstring).

    ``Vocabulary.build(tokens, specials=("<unk>",))`` collects the distinct tokens of an
    iterable; ``Vocabulary.of_bytes()`` is the fixed 256-byte vocabulary.
    """

    def __init__(self, tokens: Iterable[Any], specials: Sequence[str] = ()) -> None:
        bad = [s for s in specials if s not in SPECIALS]
        if bad:
            raise ValueError(f"unknown special token(s) {bad}; expected some of {SPECIALS}")
        self.specials: tuple[str, ...] = tuple(s for s in SPECIALS if s in specials)
        ordinary = list(tokens)
        clash = [t for t in ordinary if t in self.specials]
        if clash:
            raise DataError(f"the text holds the special token(s) {clash}; they are reserved")
        if len(set(ordinary)) != len(ordinary):
            raise ValueError("the vocabulary's tokens must be distinct")
        self.tokens: tuple[Any, ...] = (*self.specials, *ordinary)
        self.index: dict[Any, int] = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, tokens: Iterable[Any], specials: Sequence[str] = ()) -> Vocabulary:
        """The vocabulary of the distinct ``tokens`` (sorted), after ``specials``."""
        return cls(sorted(set(tokens)), specials)

    @classmethod
    def of_bytes(cls, specials: Sequence[str] = ()) -> Vocabulary:
        """All 256 byte values (after ``specials``): nothing is ever unknown."""
        return cls(range(256), specials)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, specials={list(self.specials)})"

    def id(self, special: str) -> int:
        """The id of a special token this vocabulary has (``vocab.id("<eos>")``)."""
        if special not in self.specials:
            raise KeyError(f"this vocabulary has no {special} (its specials: {self.specials})")
        return self.index[special]

    def unknown(self, tokens: Iterable[Any]) -> list[Any]:
        """The distinct tokens of ``tokens`` that are not in the vocabulary, in first-seen order."""
        seen: dict[Any, None] = {}
        for t in tokens:
            if t not in self.index and t not in seen:
                seen[t] = None
        return list(seen)

    def encode(
        self, tokens: Iterable[Any], *, unknown: str = "error", what: str = "text"
    ) -> list[int]:
        """The ids of ``tokens``; unknown ones map to ``<unk>`` (``unknown="unk"``) or raise a
        DataError naming them (``unknown="error"``)."""
        tokens = list(tokens)
        missing = self.unknown(tokens)
        if not missing:
            return [self.index[t] for t in tokens]
        if unknown == "unk" and "<unk>" in self.index:
            unk = self.index["<unk>"]
            return [self.index.get(t, unk) for t in tokens]
        shown = ", ".join(repr(t) for t in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(
            f"the {what} holds {len(missing)} token(s) outside the vocabulary of "
            f"{len(self)}: {shown}"
        )

    def decode(self, ids: Iterable[int]) -> list[Any]:
        """The tokens of ``ids``."""
        out = []
        for i in ids:
            if not 0 <= int(i) < len(self.tokens):
                raise ValueError(f"token id {int(i)} is outside the vocabulary of {len(self)}")
            out.append(self.tokens[int(i)])
        return out

    def state(self) -> dict[str, Any]:
        """JSON data :meth:`from_state` rebuilds this vocabulary from (saved in a run)."""
        return {"specials": list(self.specials), "tokens": list(self.tokens[len(self.specials) :])}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, source: str = "run state") -> Vocabulary:
        """The vocabulary :meth:`state` saved; a malformed entry is a DataError."""
        try:
            specials, tokens = state["specials"], state["tokens"]
            if not isinstance(specials, list) or not isinstance(tokens, list):
                raise TypeError("specials and tokens must be lists")
            if not all(isinstance(t, str | int) and not isinstance(t, bool) for t in tokens):
                raise TypeError("tokens must be strings or byte values")
            return cls(tokens, specials)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: not a vocabulary ({exc})") from None
