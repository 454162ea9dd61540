"""Sequence to sequence: an RNN encoder-decoder (:class:`grukit.tasks.seq2seq.model.Seq2Seq`)
maps a source token sequence to a target one.

Tokens are characters or whitespace-separated words (``[task] level``). Each side has its own
:class:`grukit.vocab.Vocabulary`, built from the train split: the source's has ``<pad>`` and
``<unk>``, the target's ``<pad>``, ``<bos>``, ``<eos>`` and ``<unk>`` (ids 0-3 as the vocabulary
module fixes them). The decoder reads ``<bos> y_1 .. y_T`` and is scored on ``y_1 .. y_T
<eos>``. Tokens of the valid and test splits (and of a ``--data`` file to translate) that the
train split never had map to ``<unk>``; a sentence given to ``grukit translate`` with such a
token is refused, naming it.

The loss is the cross-entropy summed over target tokens (``<eos>`` included, padding excluded),
with scheduled teacher forcing: the ratio of true previous tokens is ``teacher_forcing`` in
epoch 1, lowered by ``teacher_forcing_decay`` per epoch down to ``teacher_forcing_min``
(:meth:`Seq2SeqTask.start_epoch`). Evaluation is always teacher-forced for ``nll``.

Metrics of a split, from a batched greedy decode: ``exact_match`` (watched; the whole output up
to ``<eos>`` equals the target), ``token_accuracy`` (position by position over the target's
tokens and its ``<eos>``; a position after the output ended counts as wrong), ``nll`` (nats
per target token, teacher-forced) and, for text data (TSV), ``bleu``: corpus BLEU of the
detokenised outputs against the targets through ``sacrebleu.corpus_bleu`` (the ``text`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grukit.errors import ConfigError, DataError
from grukit.tasks.base import Task, TaskConfig, opt
from grukit.tasks.seq2seq.data import SPLITS, SYNTHETIC, ParallelData, load_parallel
from grukit.tasks.seq2seq.model import Seq2Seq
from grukit.vocab import Vocabulary, detokenize, tokenize

__all__ = ["BLEU_MISSING", "Seq2SeqBatch", "Seq2SeqConfig", "Seq2SeqTask", "corpus_bleu"]

SOURCE_SPECIALS = ("<pad>", "<unk>")
TARGET_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
LEVELS = ("char", "word")
BLEU_MISSING = "sacrebleu is not installed, so no BLEU: pip install 'grukit[text]'."


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float | str:
    """Corpus BLEU (0-100) of ``hypotheses`` against one reference each, by
    ``sacrebleu.corpus_bleu`` (its default 13a tokenisation); :data:`BLEU_MISSING` without it."""
    try:
        import sacrebleu
    except ImportError:
        return BLEU_MISSING
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


@dataclass
class Seq2SeqConfig(TaskConfig):
    """``[task]`` of the sequence-to-sequence task."""

    name: str = opt("seq2seq", "task: seq2seq (an encoder-decoder maps a source to a target)")
    data: str = opt(
        "addition",
        f"{', '.join(SYNTHETIC)} (generated), a TSV file of source<TAB>target lines, or a "
        "folder with train.tsv, valid.tsv and test.tsv",
    )
    level: str = opt("char", "tokens: char (characters) or word (whitespace-separated)")
    attention: bool = opt(False, "Bahdanau-style additive attention over the encoder outputs")
    embedding_size: int = opt(64, "width of the source and target token embeddings")
    reverse_source: bool = opt(
        False, "feed the source backwards (Sutskever et al. 2014; the Keras addition example)"
    )
    teacher_forcing: float = opt(1.0, "share of true previous tokens fed to the decoder, epoch 1")
    teacher_forcing_decay: float = opt(0.0, "subtracted from the teacher-forcing ratio per epoch")
    teacher_forcing_min: float = opt(0.0, "the teacher-forcing ratio never falls below this")
    beam_width: int = opt(1, "grukit translate: beams (1: greedy)")
    length_penalty: float = opt(
        1.0, "beam search ranks finished outputs by log p / length ** this (0: raw log p)"
    )
    max_output_length: int = opt(
        200, "decode at most min(this, 2 * source tokens + 10) output tokens (translate, BLEU)"
    )
    train_pairs: int = opt(50_000, "addition, reverse: training pairs generated")
    eval_pairs: int = opt(5_000, "addition, reverse: validation pairs, and as many test pairs")
    digits: int = opt(3, "addition: at most this many digits per operand")
    min_length: int = opt(20, "reverse: shortest source")
    max_length: int = opt(40, "reverse: longest source")
    alphabet_size: int = opt(10, "reverse: letters a, b, ... the sources are drawn from")
    valid_fraction: float = opt(0.1, "one TSV file: share held out for validation")
    test_fraction: float = opt(0.1, "one TSV file: share held out for test")
    data_seed: int = opt(0, "seed of the generated pairs and of a TSV file's split")

    resumable: ClassVar[frozenset[str]] = frozenset({"beam_width", "length_penalty"})

    def validate(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"task.level must be char or word, got {self.level!r}")
        for name in ("teacher_forcing", "teacher_forcing_min"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"task.{name} must be in [0, 1], got {value}")
        if not (math.isfinite(self.teacher_forcing_decay) and self.teacher_forcing_decay >= 0):
            raise ConfigError(
                f"task.teacher_forcing_decay must be >= 0, got {self.teacher_forcing_decay}"
            )
        if not (math.isfinite(self.length_penalty) and 0 <= self.length_penalty <= 10):
            raise ConfigError(f"task.length_penalty must be in [0, 10], got {self.length_penalty}")
        bounds = {
            "embedding_size": (1, 65536), "beam_width": (1, 1000),
            "max_output_length": (1, 100_000), "train_pairs": (1, 10**8),
            "eval_pairs": (1, 10**8), "digits": (1, 18), "min_length": (1, 10_000),
            "max_length": (1, 10_000), "alphabet_size": (2, 26),
        }  # fmt: skip
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"task.{name} must be in [{low}, {high}], got {value}")
        if self.min_length > self.max_length:
            raise ConfigError(
                f"task.min_length ({self.min_length}) must be <= task.max_length "
                f"({self.max_length})"
            )
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise ConfigError(f"task.{name} must be in (0, 0.5), got {value}")
        if self.data in SYNTHETIC and self.level != "char":
            raise ConfigError(f"the {self.data} benchmark is made of characters: task.level char")


@dataclass
class Seq2SeqBatch:
    source: Tensor  # (S, N) int64 source ids, <pad> after each sequence
    source_lengths: Tensor  # (N,) int64 on the CPU, each >= 1
    target_in: Tensor  # (T, N) <bos> y_1 .. y_{T_i}, then <pad>
    target_out: Tensor  # (T, N) y_1 .. y_{T_i} <eos>, then <pad>
    index: Tensor  # (N,) positions of the pairs within their split
    split: str
    tokens: int  # target tokens scored (<eos> included)
    items: int  # pairs


def _pad(rows: Sequence[Sequence[int]], pad: int) -> Tensor:
    """``(max_len, N)`` int64 of ``rows``, time-major, padded with ``pad``."""
    out = torch.full((max(len(r) for r in rows), len(rows)), pad, dtype=torch.long)
    for j, r in enumerate(rows):
        out[: len(r), j] = torch.as_tensor(r, dtype=torch.long)
    return out


class Seq2SeqTask(Task):
    """An encoder-decoder on a :class:`ParallelData` (see the module docstring)."""

    name = "seq2seq"
    Config = Seq2SeqConfig
    monitor = "exact_match"
    tiebreak = "nll"
    modes = {"exact_match": "max", "token_accuracy": "max", "nll": "min", "bleu": "max"}
    headline = ("exact_match", "token_accuracy", "bleu", "nll")
    unit = "pair"
    defaults = {
        "model.hidden_size": 128, "optim.batch_size": 128, "optim.lr": 3e-3,
        "optim.weight_noise": 0.0, "optim.ema": 0.0, "optim.epochs": 40,
        "optim.patience": 10, "optim.plateau_patience": 3,
    }  # fmt: skip

    def __init__(
        self,
        data: ParallelData,
        config: Seq2SeqConfig | None = None,
        *,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config or Seq2SeqConfig(data=data.name)
        self.data = data
        state = dict(state or {})
        level = self.config.level
        if state.get("level", level) != level:
            raise DataError(f"the run's vocabularies are of {state['level']}s, not {level}s")
        tokens = {s: [self._source_tokens(src) for src, _ in data.splits[s]] for s in SPLITS}
        targets = {s: [tokenize(tgt, level) for _, tgt in data.splits[s]] for s in SPLITS}
        if "source_vocab" in state:
            where = "the run's task state"
            self.source_vocab = Vocabulary.from_state(state["source_vocab"], source=where)
            self.target_vocab = Vocabulary.from_state(state["target_vocab"], source=where)
        else:
            self.source_vocab = Vocabulary.build(
                (t for seq in tokens["train"] for t in seq), SOURCE_SPECIALS
            )
            self.target_vocab = Vocabulary.build(
                (t for seq in targets["train"] for t in seq), TARGET_SPECIALS
            )
        self.pad = self.target_vocab.id("<pad>")
        self.bos = self.target_vocab.id("<bos>")
        self.eos = self.target_vocab.id("<eos>")
        if self.source_vocab.id("<pad>") != self.pad:
            raise DataError("the source and target vocabularies disagree on <pad>")
        self._source: dict[str, list[list[int]]] = {}
        self._target: dict[str, list[list[int]]] = {}
        for s in SPLITS:
            self._source[s] = [self.source_vocab.encode(t, unknown="unk") for t in tokens[s]]
            self._target[s] = [self.target_vocab.encode(t, unknown="unk") for t in targets[s]]
        self.ratio = self.config.teacher_forcing

    def _source_tokens(self, text: str) -> list[Any]:
        tokens = tokenize(text, self.config.level)
        return tokens[::-1] if self.config.reverse_source else tokens

    # ------------------------------------------------------------------ Task

    @classmethod
    def load(
        cls, config: TaskConfig, *, progress: bool = True, state: Mapping[str, Any] | None = None
    ) -> Seq2SeqTask:
        assert isinstance(config, Seq2SeqConfig)
        c = config
        data = load_parallel(
            c.data, train_pairs=c.train_pairs, eval_pairs=c.eval_pairs, digits=c.digits,
            min_length=c.min_length, max_length=c.max_length, alphabet_size=c.alphabet_size,
            valid_fraction=c.valid_fraction, test_fraction=c.test_fraction, seed=c.data_seed,
        )  # fmt: skip
        return cls(data, config, state=state)

    def state(self) -> dict[str, Any]:
        return {
            "level": self.config.level,
            "source_vocab": self.source_vocab.state(),
            "target_vocab": self.target_vocab.state(),
        }

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(self._source[s])}" for s in SPLITS)
        return (
            f"{self.data.name}: {self.config.level} level, vocabularies of "
            f"{len(self.source_vocab)} (source) and {len(self.target_vocab)} (target) tokens; "
            f"{sizes} pairs"
        )

    def size(self, split: str) -> int:
        return len(self._source[split])

    def start_epoch(self, epoch: int) -> None:
        """The teacher-forcing ratio of training epoch ``epoch`` (1-based)."""
        c = self.config
        ratio = c.teacher_forcing - c.teacher_forcing_decay * (epoch - 1)
        self.ratio = max(c.teacher_forcing_min, min(c.teacher_forcing, ratio))

    def build_model(self, model: Any, cell: Any = None) -> nn.Module:
        return Seq2Seq(
            len(self.source_vocab), len(self.target_vocab), model, cell,
            embedding_size=self.config.embedding_size, attention=self.config.attention,
            pad_id=self.pad, bos_id=self.bos, eos_id=self.eos,
        )  # fmt: skip

    def batches(
        self, split: str, batch_size: int, *, shuffle: bool = False, generator: Any = None
    ) -> Iterator[Seq2SeqBatch]:
        sources, targets = self._source[split], self._target[split]
        if shuffle:
            order = torch.randperm(len(sources), generator=generator)
        else:  # similar lengths together: less padding
            order = torch.as_tensor(
                sorted(range(len(sources)), key=lambda i: -len(sources[i])), dtype=torch.long
            )
        for start in range(0, len(sources), batch_size):
            index = order[start : start + batch_size]
            rows = index.tolist()
            yield self._batch([sources[i] for i in rows], [targets[i] for i in rows], index, split)

    def _batch(
        self, sources: list[list[int]], targets: list[list[int]], index: Tensor, split: str
    ) -> Seq2SeqBatch:
        return Seq2SeqBatch(
            source=_pad(sources, self.pad),
            source_lengths=torch.as_tensor([len(s) for s in sources], dtype=torch.long),
            target_in=_pad([[self.bos, *t] for t in targets], self.pad),
            target_out=_pad([[*t, self.eos] for t in targets], self.pad),
            index=index,
            split=split,
            tokens=sum(len(t) + 1 for t in targets),
            items=len(sources),
        )

    def _logits(self, model: nn.Module, batch: Seq2SeqBatch) -> Tensor:
        device = next(model.parameters()).device
        ratio = self.ratio if model.training else 1.0
        return model(
            batch.source.to(device), batch.source_lengths, batch.target_in.to(device),
            teacher_forcing=ratio,
        )  # fmt: skip

    def loss(self, model: nn.Module, batch: Seq2SeqBatch) -> tuple[Tensor, int]:
        """Cross-entropy summed over the batch's target tokens (``<eos>`` in, padding out)."""
        logits = self._logits(model, batch)
        target = batch.target_out.to(logits.device)
        loss = F.cross_entropy(
            logits.flatten(0, 1), target.flatten(), ignore_index=self.pad, reduction="sum"
        )
        return loss, batch.tokens

    def eval_sums(self, model: nn.Module, batch: Seq2SeqBatch) -> dict[str, Any]:
        nll, tokens = self.loss(model, batch)
        device = next(model.parameters()).device
        target = batch.target_out  # (T, N)
        T = target.shape[0]
        lengths = batch.source_lengths
        # exact match and token accuracy read the first T positions only; BLEU reads the whole
        # output, decoded as `grukit translate` decodes it
        steps = self._limit(int(lengths.max())) if self.data.text else T
        full = model.greedy(batch.source.to(device), lengths, steps).cpu()
        decoded = full[:, :T]
        predicted = torch.full((batch.items, T), self.pad, dtype=torch.long)
        predicted[:, : decoded.shape[1]] = decoded
        truth = target.transpose(0, 1)  # (N, T)
        valid = truth != self.pad
        same = (predicted == truth) & valid
        sums: dict[str, Any] = {
            "nll": float(nll), "tokens": tokens, "count": batch.items,
            "exact": int(same.sum(1).eq(valid.sum(1)).sum()), "correct": int(same.sum()),
        }  # fmt: skip
        if self.data.text:
            split = batch.split
            sums["hypotheses"] = [self._text(row) for row in self._cut(full, lengths)]
            sums["references"] = [self.data.splits[split][i][1] for i in batch.index.tolist()]
        return sums

    def metrics(self, sums: Mapping[str, Any], split: str) -> dict[str, Any]:
        """exact_match, token_accuracy, nll (nats per target token), bleu (text data), count."""
        result: dict[str, Any] = {
            "exact_match": sums["exact"] / sums["count"],
            "token_accuracy": sums["correct"] / sums["tokens"],
            "nll": sums["nll"] / sums["tokens"],
        }
        if "hypotheses" in sums:
            result["bleu"] = corpus_bleu(sums["hypotheses"], sums["references"])
        result["count"] = sums["count"]
        return result

    def summary(self, result: Mapping[str, Any]) -> str:
        splits = [s for s in SPLITS if s in result]
        lines = []
        for name in self.headline:
            values = [(s, result[s][name]) for s in splits if name in result[s]]
            if not values:
                continue
            if any(isinstance(v, str) for _, v in values):
                lines.append(f"{name}: {values[0][1]}")
                continue
            lines.append(f"{name}: " + ", ".join(f"{s} {v:.4f}" for s, v in values))
        return "\n".join(lines)

    def report(
        self, model: nn.Module, run_dir: Path, result: Mapping[str, Any], *, log: Any = print
    ) -> dict[str, str]:
        """``test_outputs.tsv``: source, target and greedy output of every test pair."""
        from grukit.io import atomic_write_text

        pairs = self.data.splits["test"]
        outputs = self.translate(model, [s for s, _ in pairs], unknown="unk")
        lines = ["source\ttarget\toutput"]
        lines += [f"{s}\t{t}\t{o}" for (s, t), o in zip(pairs, outputs, strict=True)]
        path = run_dir / "test_outputs.tsv"
        atomic_write_text(path, "\n".join(lines) + "\n")
        for (s, t), o in list(zip(pairs, outputs, strict=True))[:3]:
            log(f"  {s!r} -> {o!r} (target {t!r})")
        return {"outputs": str(path)}

    # ------------------------------------------------------------------ translation

    def _limit(self, source_length: int) -> int:
        """The most output tokens decoded for a source of ``source_length`` tokens:
        ``min(max_output_length, 2 * source_length + 10)``."""
        return min(self.config.max_output_length, 2 * source_length + 10)

    def _cut(self, decoded: Tensor, lengths: Tensor) -> list[list[int]]:
        """Each row of a batched decode ``(N, steps)`` cut to its own source's limit."""
        return [
            row[: self._limit(int(n))]
            for row, n in zip(decoded.tolist(), lengths.tolist(), strict=True)
        ]

    def _text(self, ids: Sequence[int]) -> str:
        """The text of decoded ids: up to the first ``<eos>``, other specials dropped."""
        tokens = []
        for i in ids:
            if i == self.eos:
                break
            if i not in (self.pad, self.bos):
                tokens.append(self.target_vocab.tokens[i])
        return detokenize(tokens, self.config.level)

    def encode_source(self, text: str, *, unknown: str = "error") -> list[int]:
        """The source ids of ``text``; tokens outside the vocabulary raise (``"error"``) or
        map to ``<unk>`` (``"unk"``)."""
        tokens = self._source_tokens(text)
        if not tokens:
            raise DataError("the source text is empty")
        return self.source_vocab.encode(tokens, unknown=unknown, what=f"source {text[:60]!r}")

    @torch.no_grad()
    def translate(
        self,
        model: nn.Module,
        texts: Sequence[str],
        *,
        beam: int | None = None,
        unknown: str = "error",
        batch_size: int = 64,
    ) -> list[str]:
        """The decoded output of each source text: greedy (batched) for beam 1, else beam
        search per text (``beam`` defaults to ``task.beam_width``)."""
        model.eval()
        beam = self.config.beam_width if beam is None else beam
        if not 1 <= beam <= 1000:
            raise ConfigError(f"--beam must be an integer in [1, 1000], got {beam}")
        ids = [self.encode_source(t, unknown=unknown) for t in texts]
        device = next(model.parameters()).device
        out: list[str] = []
        if beam > 1:
            for row in ids:
                best = model.beam_search(
                    torch.as_tensor(row, device=device), beam, self._limit(len(row)),
                    self.config.length_penalty,
                )  # fmt: skip
                out.append(self._text(best))
            return out
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            lengths = torch.as_tensor([len(r) for r in chunk], dtype=torch.long)
            steps = self._limit(int(lengths.max()))
            decoded = model.greedy(_pad(chunk, self.pad).to(device), lengths, steps).cpu()
            out.extend(self._text(row) for row in self._cut(decoded, lengths))
        return out

    def translate_file(
        self, model: nn.Module, data: str, out: Path, *, beam: int | None = None
    ) -> int:
        """Write ``source<TAB>output`` for each non-blank line of ``data`` (a TSV file's
        source column, or plain lines) to ``out``; tokens outside the vocabulary map to
        ``<unk>``. Returns the number of lines."""
        from grukit.io import atomic_write_text

        sources = _source_lines(Path(data))
        outputs = self.translate(model, sources, beam=beam, unknown="unk")
        text = "".join(f"{s}\t{o}\n" for s, o in zip(sources, outputs, strict=True))
        atomic_write_text(out, text)
        return len(sources)


def _source_lines(path: Path) -> list[str]:
    """The sources of a file to translate: each non-blank line, before its first tab."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected lines of source text)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at byte offset {exc.start}"
        ) from None
    sources = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        source = line.split("\t", 1)[0]
        if not source.strip():
            raise DataError(f"{path}, line {number}: the source (before the tab) is empty")
        sources.append(source)
    if not sources:
        raise DataError(f"{path}: the file holds no lines to translate")
    return sources
