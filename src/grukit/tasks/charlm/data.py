"""Text for the character language model: reading, named corpora, contiguous splits, and the
stream layout of truncated backpropagation through time.

Named texts: ``tinyshakespeare`` (char-rnn's and nanoGPT's 1,115,394 characters, downloaded once
and checked by sha256) and ``python-docs`` (the Python language reference topics that every
CPython ships in ``pydoc_data.topics``, about 465,000 characters: the offline default). Any
other value is a path to a UTF-8 text file (or, with ``level = "byte"``, any file).

Splits are contiguous, as in nanoGPT's ``shakespeare_char``: the first ``1 - valid - test``
share of the text trains (``int(n * share)`` characters), then ``valid``, then ``test``
(``int(n * test)`` characters at the end).

:func:`streams` lays a split out as ``B`` contiguous streams side by side, the standard
char-rnn layout: stream ``b`` is characters ``b*m .. (b+1)*m`` of the split, so chunk ``k``
of every stream follows chunk ``k-1`` and the state that ended one chunk begins the next.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from grukit.errors import DataError
from grukit.vocab import Vocabulary, tokenize

__all__ = ["NAMED_TEXTS", "TextData", "load_text", "read_text", "split_text", "streams"]

NAMED_TEXTS = ("tinyshakespeare", "python-docs")

#: larger files are refused (the whole text is held in memory as int64 ids)
MAX_TEXT_BYTES = 1 << 30


def read_text(path: str | os.PathLike[str], level: str = "char") -> str | bytes:
    """The contents of a text file: a ``str`` (``level`` char or word: UTF-8, strictly) or the
    raw ``bytes`` (``level="byte"``). An empty file, a folder, or a file that is not UTF-8 is a
    DataError that names the byte offset of the first bad byte."""
    from grukit.io import read_data_file

    data = read_data_file(
        path, expected=f"a UTF-8 text file or a named text: {', '.join(NAMED_TEXTS)}",
        max_bytes=MAX_TEXT_BYTES, text=level != "byte",
        hint="; model its bytes instead with --level byte",
    )  # fmt: skip
    if not data:
        raise DataError(f"{path}: the file is empty; a language model needs text to read")
    return data


def _python_docs() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def load_text(data: str, level: str = "char", *, progress: bool = False) -> tuple[str, str | bytes]:
    """``(name, text)`` of a named text or a file path (see the module docstring)."""
    if data == "tinyshakespeare":
        from grukit.data.download import fetch

        return data, read_text(fetch(data, progress=progress), level)
    if data == "python-docs":
        text = _python_docs()
        return data, text.encode("utf-8") if level == "byte" else text
    return Path(data).name, read_text(data, level)


def split_text(tokens: Sequence[object], valid: float, test: float) -> dict[str, Sequence[object]]:
    """Contiguous ``train | valid | test`` parts of ``tokens``: ``int(n * (1 - valid - test))``
    tokens train, the last ``int(n * test)`` test, valid the rest between."""
    n = len(tokens)
    n_train = int(n * (1.0 - valid - test) + 1e-9)  # 1 - 0.05 - 0.05 is 0.8999...; 0.9 meant
    n_test = int(n * test)
    return {
        "train": tokens[:n_train],
        "valid": tokens[n_train : n - n_test],
        "test": tokens[n - n_test :] if n_test else tokens[:0],
    }


@dataclass
class TextData:
    """A text cut into tokens, its vocabulary (built on the train part) and its splits as ids."""

    name: str
    level: str
    vocab: Vocabulary
    ids: dict[str, Tensor]  # split -> (n,) int64 token ids
    unknown: dict[str, int]  # split -> how many of its tokens the vocabulary lacks (-> <unk>)

    @classmethod
    def build(
        cls,
        name: str,
        text: str | bytes,
        level: str,
        valid: float,
        test: float,
        vocab: Vocabulary | None = None,
    ) -> TextData:
        """Tokenise, split, build the vocabulary on train (unless ``vocab`` is given: a saved
        run's) and encode every split; unknown tokens map to ``<unk>``."""
        tokens = tokenize(text, level)
        parts = split_text(tokens, valid, test)
        if len(parts["train"]) < 2:
            raise DataError(
                f"{name}: {len(tokens)} {level}s leave {len(parts['train'])} for training; "
                "a language model needs at least two"
            )
        if vocab is None:
            vocab = Vocabulary.of_bytes() if level == "byte" else Vocabulary.build(
                parts["train"], specials=("<unk>",)
            )  # fmt: skip
        ids, unknown = {}, {}
        for split, part in parts.items():
            unknown[split] = sum(1 for t in part if t not in vocab)
            ids[split] = torch.tensor(vocab.encode(part, unknown="unk"), dtype=torch.int64)
        return cls(name, level, vocab, ids, unknown)


def streams(ids: Tensor, num_streams: int, offset: int = 0) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)``, each ``(m, B)`` time-major: stream ``b`` reads tokens
    ``offset + b*m + t`` and predicts ``offset + b*m + t + 1`` for ``t < m``, where
    ``m = (len(ids) - 1 - offset) // B``. The few tokens past the last stream are not read."""
    usable = ids.numel() - 1 - offset
    m = usable // num_streams
    if m < 1:
        raise DataError(
            f"{ids.numel()} tokens cannot fill {num_streams} streams of at least one step "
            f"(from offset {offset}); lower --batch-size"
        )
    x = ids[offset : offset + m * num_streams].view(num_streams, m).t()
    y = ids[offset + 1 : offset + 1 + m * num_streams].view(num_streams, m).t()
    return x, y
