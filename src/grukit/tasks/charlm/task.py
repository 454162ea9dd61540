"""Character (or byte) language modelling with truncated backpropagation through time.

The model reads characters ``1..t`` and predicts character ``t+1`` from a softmax over the
vocabulary (embedding -> recurrent stack -> linear read-out). The metric is the cross-entropy
in nats per predicted character (``nats_per_char``, watched) and in bits (``bits_per_char`` =
nats / ln 2), over every character of the split but the first of each stream.

Training is the standard char-rnn scheme: the train split is laid out as ``batch_size``
contiguous streams (:func:`grukit.tasks.charlm.data.streams`) and read in chunks of ``bptt``
steps; the state that ends a chunk begins the next one, detached, so gradients flow ``bptt``
steps back while the state carries context from the whole pass. A pass ends when the streams
do; the next pass starts from a zero state at a random offset in ``[0, bptt)`` so that chunk
boundaries move. An epoch is one pass, or ``steps_per_epoch`` chunks (an evaluation interval,
as in nanoGPT) that continue wherever the previous epoch stopped. The carried state and the
place in the text are part of ``checkpoints/last``, so a resumed run continues exactly.

Evaluation lays a split out as 64 streams and carries the state through it
(``eval_context = 0``), or resets the state every ``eval_context`` characters, which scores each
character with a context of 1 to ``eval_context`` characters, as a transformer with that
context window is scored (nanoGPT: 256).

Unknown characters (not in the train split): in evaluation text they map to ``<unk>`` (id 0,
which training never shows, so the model pays for them like for any rare character; their count
is in :meth:`CharLMTask.describe`); in a prime string for sampling they are refused.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grukit.errors import ConfigError, DataError
from grukit.models import LanguageModel, detach_state
from grukit.tasks.base import Task, TaskConfig, opt
from grukit.tasks.charlm.data import NAMED_TEXTS, TextData, load_text, streams
from grukit.vocab import Vocabulary, detokenize, tokenize

__all__ = ["CharBatch", "CharLMConfig", "CharLMTask"]

LEVELS = ("char", "byte")
EVAL_STREAMS = 64
EVAL_CHUNK = 256


@dataclass
class CharLMConfig(TaskConfig):
    """``[task]`` of the character language model."""

    name: str = opt("charlm", "task: charlm (next-character prediction)")
    data: str = opt(
        "python-docs",
        f"text: {', '.join(NAMED_TEXTS)} (named), or a path to a UTF-8 text file",
    )
    level: str = opt("char", "char (a vocabulary of the train split's characters) or byte")
    valid_fraction: float = opt(0.05, "share of the text after the train part for validation")
    test_fraction: float = opt(0.05, "share at the end for test (0: no test split)")
    bptt: int = opt(128, "steps of truncated backpropagation through time per chunk")
    steps_per_epoch: int = opt(0, "chunks per epoch (0: one whole pass over the train split)")
    embedding_size: int = opt(128, "width of the character embedding")
    tie_weights: bool = opt(False, "read-out weight = embedding (needs embedding = hidden size)")
    eval_context: int = opt(
        0, "evaluation: reset the state every N characters (0: carry it through the split)"
    )
    sample_length: int = opt(500, "characters sampled at the end of training (0: none)")

    resumable: ClassVar[frozenset[str]] = frozenset({"sample_length", "eval_context"})

    def validate(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(f"task.level must be char or byte, got {self.level!r}")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"task.{name} must be in [0, 1), got {value}")
        if self.valid_fraction <= 0:
            raise ConfigError("task.valid_fraction must be > 0: early stopping watches it")
        if self.valid_fraction + self.test_fraction >= 0.5:
            raise ConfigError(
                f"task.valid_fraction + task.test_fraction must leave at least half the text "
                f"for training, got {self.valid_fraction} + {self.test_fraction}"
            )
        bounds = {"bptt": (1, 100_000), "steps_per_epoch": (0, 10**9),
                  "embedding_size": (1, 65536), "eval_context": (0, 10**9),
                  "sample_length": (0, 10**7)}  # fmt: skip
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"task.{name} must be in [{low}, {high}], got {value}")


@dataclass
class CharBatch:
    inputs: Tensor  # (T, B) int64 token ids
    targets: Tensor  # (T, B) the next tokens
    split: str
    reset: bool  # start from a zero state (a new pass or a new evaluation window)
    items: int  # predicted tokens


class CharLMTask(Task):
    """Next-character prediction on a :class:`TextData` (see the module docstring)."""

    name = "charlm"
    Config = CharLMConfig
    monitor = "nats_per_char"
    modes = {"nats_per_char": "min", "bits_per_char": "min"}
    headline = ("nats_per_char", "bits_per_char")
    unit = "char"
    defaults = {
        "model.hidden_size": 512, "optim.batch_size": 64, "optim.lr": 0.002,
        "optim.weight_noise": 0.0, "optim.ema": 0.0, "optim.epochs": 30,
        "optim.patience": 5, "optim.plateau_patience": 1,
    }  # fmt: skip
    compare_models = (("gru", 512), ("mingru", 0), ("lstm", 0))
    unshardable = (
        "each batch continues the previous one's streams with their carried state, so the "
        "streams would have to be split over the ranks (not implemented); train it in one process"
    )

    def __init__(self, data: TextData, config: CharLMConfig | None = None) -> None:
        self.config = config or CharLMConfig(data=data.name)
        self.data = data
        self.vocab = data.vocab
        self._carry: Any = None
        self._eval_state: Any = None
        self.reset_progress()

    @classmethod
    def load(
        cls, config: TaskConfig, *, progress: bool = True, state: Mapping[str, Any] | None = None
    ) -> CharLMTask:
        assert isinstance(config, CharLMConfig)
        vocab = None
        if state and "vocab" in state:
            vocab = Vocabulary.from_state(state["vocab"], source="the run's task state")
            if state.get("level", config.level) != config.level:
                raise DataError(
                    f"the run's vocabulary is of {state['level']}s, not {config.level}s"
                )
        name, text = load_text(config.data, config.level, progress=progress)
        data = TextData.build(
            name, text, config.level, config.valid_fraction, config.test_fraction, vocab
        )
        return cls(data, config)

    def state(self) -> dict[str, Any]:
        return {"level": self.data.level, "vocab": self.vocab.state()}

    def describe(self) -> str:
        parts = []
        for split in ("train", "valid", "test"):
            n = self.data.ids[split].numel()
            if n:
                unk = self.data.unknown[split]
                parts.append(f"{split} {n}" + (f" ({unk} unknown)" if unk else ""))
        return (
            f"{self.data.name}: {', '.join(parts)} {self.data.level}s, "
            f"vocabulary of {len(self.vocab)}"
        )

    def size(self, split: str) -> int:
        """Tokens of ``split``; 0 for train when an epoch is ``steps_per_epoch`` chunks (the
        progress bar then counts without a total)."""
        if split == "train" and self.config.steps_per_epoch:
            return 0
        return self.data.ids[split].numel()

    # ------------------------------------------------------------------ model

    def build_model(self, model: Any, cell: Any = None) -> nn.Module:
        if model.bidirectional:
            raise ConfigError(
                "the character LM predicts the next character from the past only: "
                "model.bidirectional must be false"
            )
        return LanguageModel(
            len(self.vocab), self.config.embedding_size, model, cell=cell,
            tie_weights=self.config.tie_weights,
        )  # fmt: skip

    # ------------------------------------------------------------------ batches

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[CharBatch]:
        """Training: the next chunks of the carried streams (see the module docstring).
        Evaluation: the whole split as 64 streams, from a zero state."""
        if split == "train" and shuffle:
            yield from self._train_chunks(batch_size, generator)
            return
        ids = self.data.ids[split]
        if ids.numel() < 2:
            raise DataError(
                f"this run has no {split} split"
                + (" (task.test_fraction is 0)" if split == "test" else "")
            )
        x, y = streams(ids, min(EVAL_STREAMS, ids.numel() - 1))
        window = self.config.eval_context
        chunk = min(window, EVAL_CHUNK) if window else EVAL_CHUNK
        for start in range(0, x.shape[0], chunk):
            stop = min(start + chunk, x.shape[0])
            if window:  # never cross a window boundary inside a chunk
                stop = min(stop, (start // window + 1) * window)
            reset = start == 0 or (window > 0 and start % window == 0)
            yield CharBatch(x[start:stop], y[start:stop], split, reset, (stop - start) * x.shape[1])

    def _train_chunks(
        self, batch_size: int, generator: torch.Generator | None
    ) -> Iterator[CharBatch]:
        bptt, limit = self.config.bptt, self.config.steps_per_epoch
        ids = self.data.ids["train"]
        if (ids.numel() - 1) // batch_size < 2:
            raise DataError(
                f"the train split ({ids.numel()} {self.data.level}s) is too short for "
                f"{batch_size} streams; lower --batch-size"
            )
        done = 0
        while True:
            x, y = streams(ids, batch_size, self._offset)
            while self._position < x.shape[0]:
                if limit and done == limit:
                    return
                start = self._position
                stop = min(start + bptt, x.shape[0])
                self._position = stop
                done += 1
                yield CharBatch(x[start:stop], y[start:stop], "train", start == 0,
                                (stop - start) * batch_size)  # fmt: skip
            # the pass is over: the next starts from a zero state at a random offset
            self._pass += 1
            self._position = 0
            self._carry = None
            self._offset = int(torch.randint(bptt, (1,), generator=generator)) if bptt > 1 else 0
            if (ids.numel() - 1 - self._offset) // batch_size < 1:
                self._offset = 0
            if not limit:
                return

    # ------------------------------------------------------------------ loss and metrics

    def _forward(self, model: nn.Module, batch: CharBatch) -> Tensor:
        """Logits of the batch from the carried state, which then moves on (detached)."""
        device = next(model.parameters()).device
        state = None if batch.reset else (
            self._carry if batch.split == "train" and model.training else self._eval_state
        )  # fmt: skip
        if state is not None:  # a restored state is on the CPU
            state = (
                tuple(s.to(device) for s in state) if isinstance(state, tuple) else state.to(device)
            )
        logits, state = model(batch.inputs.to(device), state)
        if batch.split == "train" and model.training:
            self._carry = detach_state(state)
        else:
            self._eval_state = detach_state(state)
        return logits

    def loss(self, model: nn.Module, batch: CharBatch) -> tuple[Tensor, int]:
        """Summed cross-entropy (nats) over the batch's predicted characters, and their number."""
        logits = self._forward(model, batch)
        targets = batch.targets.to(logits.device).reshape(-1)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="sum")
        return nll, batch.items

    def metrics(self, sums: Mapping[str, Any], split: str) -> dict[str, Any]:
        """``nats_per_char``, ``bits_per_char`` and ``chars`` (predicted) of a split."""
        nats = sums["loss"] / sums["count"]
        return {"nats_per_char": nats, "bits_per_char": nats / math.log(2), "chars": sums["count"]}

    # ------------------------------------------------------------------ carried state

    def progress(self) -> dict[str, Any]:
        carry = self._carry
        if isinstance(carry, tuple):
            carry = tuple(c.cpu() for c in carry)
        elif carry is not None:
            carry = carry.cpu()
        return {"pass": self._pass, "position": self._position, "offset": self._offset,
                "carry": carry}  # fmt: skip

    def reset_progress(self) -> None:
        """The training stream from its start: pass 0, chunk 0, offset 0, no carried state."""
        self._pass, self._position, self._offset = 0, 0, 0
        self._carry = None
        self._eval_state = None

    def restore_progress(self, state: Any) -> None:
        if state is None:
            return
        for key in ("pass", "position", "offset"):
            if not isinstance(state[key], int) or state[key] < 0:
                raise ValueError(f"{key} must be an integer >= 0, got {state[key]!r}")
        carry = state["carry"]
        ok = carry is None or isinstance(carry, Tensor) or (
            isinstance(carry, tuple) and all(isinstance(c, Tensor) for c in carry)
        )  # fmt: skip
        if not ok:
            raise TypeError("carry must be a tensor, a tuple of tensors or null")
        self._pass, self._position, self._offset = state["pass"], state["position"], state["offset"]
        self._carry = carry

    # ------------------------------------------------------------------ generation

    def encode_prime(self, prime: str) -> list[int]:
        """The ids of a prime string; characters outside the vocabulary are refused."""
        return self.vocab.encode(tokenize(prime, self.data.level), what="prime string")

    def default_prime(self) -> list[int]:
        """What an empty prime starts from: a newline if the vocabulary has one, else the
        train split's most common token."""
        newline = tokenize("\n", self.data.level)
        if all(t in self.vocab for t in newline):
            return self.vocab.encode(newline)
        return [int(torch.bincount(self.data.ids["train"]).argmax())]

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        length: int,
        *,
        prime: str = "",
        temperature: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        on_text: Callable[[str], object] | None = None,
    ) -> str:
        """``length`` new characters after ``prime``, one step at a time through the step path.

        Each next character is drawn from ``softmax(logits / temperature)`` over the vocabulary
        but ``<unk>``, restricted to the ``top_k`` most likely when ``top_k > 0``, with a
        generator seeded by ``seed``.
        ``on_text`` gets the text as it comes (whole characters; for bytes, decoded lines).
        Returns the generated text, the prime excluded.
        """
        if temperature <= 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        model.eval()
        device = next(model.parameters()).device
        ids = self.encode_prime(prime) if prime else self.default_prime()
        g = torch.Generator().manual_seed(seed)
        state = None
        logits, state = model(torch.tensor(ids, device=device)[:, None], state)
        logits = logits[-1]
        out: list[int] = []
        pending: list[int] = []
        unk = self.vocab.index.get("<unk>")
        for _ in range(length):
            scores = logits[0].float().cpu() / temperature
            if unk is not None:  # never emitted: it stands for "a character training never saw"
                scores[unk] = -math.inf
            if top_k and top_k < scores.numel():
                kth = torch.topk(scores, top_k).values[-1]
                scores = scores.masked_fill(scores < kth, -math.inf)
            token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=g))
            out.append(token)
            if on_text is not None:
                pending.append(token)
                if self.data.level == "char" or self.vocab.tokens[token] == 10:
                    on_text(self._text(pending))
                    pending = []
            logits, state = model.step(torch.tensor([token], device=device), state)
        if on_text is not None and pending:
            on_text(self._text(pending))
        return self._text(out)

    def _text(self, ids: list[int]) -> str:
        return detokenize(self.vocab.decode(ids), self.data.level)

    def report(
        self, model: nn.Module, run_dir: Path, result: Mapping[str, Any], *, log: Any = print
    ) -> dict[str, str]:
        """A sample of ``sample_length`` characters in ``samples/sample-seed<seed>.txt``."""
        if self.config.sample_length <= 0:
            return {}
        from grukit.io import atomic_write_text, safe_child

        start = time.perf_counter()
        text = self.generate(model, self.config.sample_length, seed=result.get("seed", 0),
                             temperature=0.8)  # fmt: skip
        seconds = time.perf_counter() - start
        path = safe_child(run_dir, "samples", f"sample-seed{result.get('seed', 0)}.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        rate = self.config.sample_length / max(seconds, 1e-9)
        return {"sample": f"{path}  ({rate:.0f} characters/s, temperature 0.8)"}


def stream_to_stdout(piece: str) -> None:
    """Print generated text as it comes."""
    sys.stdout.write(piece)
    sys.stdout.flush()
