"""Polyphonic music modelling (Boulanger-Lewandowski et al. 2012; Chung et al. 2014, sec. 4.1).

Each frame is an 88-key binary vector (MIDI 21-108). The model reads frames ``1..t`` and
predicts frame ``t+1`` as 88 independent Bernoulli variables (a recurrent stack, a linear layer,
88 sigmoids). The metric is Chung et al.'s average negative log-likelihood per time step: the
sum over the 88 keys of the Bernoulli NLL, averaged over every predicted frame of the split
(frames ``2..T`` of each sequence, as in later benchmark code: the first frame has no context).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from grukit.errors import DataError
from grukit.models import SequenceModel
from grukit.tasks.music.pianoroll import NUM_KEYS, PianoRollDataset
from grukit.tasks.music.polyphonic import load_polyphonic

__all__ = ["MusicBatch", "MusicTask"]


@dataclass
class MusicBatch:
    inputs: PackedSequence  # frames 1..T-1 of each sequence
    targets: PackedSequence  # frames 2..T, packed in the same order
    sequences: int
    frames: int  # predicted frames


class MusicTask:
    """Next-frame prediction on a :class:`PianoRollDataset` (see the module docstring)."""

    name = "music"
    metric = "nll"
    input_size = NUM_KEYS
    output_size = NUM_KEYS

    def __init__(self, dataset: PianoRollDataset) -> None:
        self.dataset = dataset
        self._tensors: dict[str, list[Tensor]] = {}
        for split in ("train", "valid", "test"):
            if split not in dataset.splits:
                raise DataError(f"data set {dataset.name!r} has no {split!r} split")
            # a single frame predicts nothing; such sequences carry no likelihood term
            seqs = [torch.as_tensor(s, dtype=torch.float32) for s in dataset.splits[split]]
            self._tensors[split] = [s for s in seqs if s.shape[0] >= 2]
            if not self._tensors[split]:
                raise DataError(
                    f"the {split!r} split of {dataset.name!r} has no sequence of two or more "
                    "frames to predict"
                )

    @classmethod
    def from_spec(cls, data: str, *, progress: bool = True) -> MusicTask:
        return cls(load_polyphonic(data, progress=progress))

    def describe(self) -> str:
        parts = [
            f"{split} {len(self._tensors[split])} sequences / {self.frames(split)} predicted frames"
            for split in ("train", "valid", "test")
        ]
        return f"{self.dataset.name}: " + ", ".join(parts)

    def sequences(self, split: str) -> int:
        return len(self._tensors[split])

    def sequence(self, split: str, index: int) -> Tensor:
        """Sequence ``index`` of ``split``: ``(T, 88)`` float32."""
        return self._tensors[split][index]

    def frames(self, split: str) -> int:
        return sum(s.shape[0] - 1 for s in self._tensors[split])

    def build_model(
        self,
        hidden_size: int,
        num_layers: int,
        variant: str,
        *,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        output_dropout: float = 0.0,
        backend: str = "auto",
    ) -> nn.Module:
        return SequenceModel(
            self.input_size, self.output_size, hidden_size, num_layers, variant=variant,
            dropout=dropout, input_dropout=input_dropout, output_dropout=output_dropout,
            backend=backend,
        )  # fmt: skip

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[MusicBatch]:
        """Mini-batches of whole sequences, packed (no padding is computed or counted)."""
        seqs = self._tensors[split]
        if shuffle:
            order = torch.randperm(len(seqs), generator=generator).tolist()
        else:  # similar lengths together: less work per step for the packed layout
            order = sorted(range(len(seqs)), key=lambda i: -seqs[i].shape[0])
        for start in range(0, len(order), batch_size):
            chunk = sorted(
                (seqs[i] for i in order[start : start + batch_size]), key=len, reverse=True
            )
            yield MusicBatch(
                inputs=pack_sequence([s[:-1] for s in chunk]),
                targets=pack_sequence([s[1:] for s in chunk]),
                sequences=len(chunk),
                frames=sum(s.shape[0] - 1 for s in chunk),
            )

    def loss(self, model: nn.Module, batch: MusicBatch) -> tuple[Tensor, int]:
        """Summed NLL (nats) over the batch's predicted frames, and their number."""
        device = next(model.parameters()).device
        logits, _ = model(batch.inputs.to(device))
        nll = F.binary_cross_entropy_with_logits(
            logits.data, batch.targets.data.to(device), reduction="sum"
        )
        return nll, batch.frames

    @torch.no_grad()
    def sample(
        self,
        model: SequenceModel,
        length: int,
        *,
        prime: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Generate ``length`` frames (``(length, 88)``, 0/1), continuing ``prime`` if given.

        Streams through :meth:`SequenceModel.step`: each key of frame ``t+1`` is drawn from its
        Bernoulli probability ``sigmoid(logit / temperature)`` given the frames so far.
        """
        model.eval()
        device = next(model.parameters()).device
        state = None
        frames: list[Tensor] = []  # on the CPU, where the generator draws
        if prime is not None and prime.shape[0] > 0:
            for frame in prime:
                frames.append(frame.float().cpu())
                logits, state = model.step(frames[-1].unsqueeze(0).to(device), state)
        else:  # no context: start from the data's mean first frame
            first = torch.stack([s[0] for s in self._tensors["train"]]).mean(0, keepdim=True)
            frames.append(torch.bernoulli(first, generator=generator)[0])
            logits, state = model.step(frames[-1].unsqueeze(0).to(device), state)
        while len(frames) < length:
            p = torch.sigmoid(logits.float().cpu() / temperature)
            x = torch.bernoulli(p, generator=generator)
            frames.append(x[0])
            logits, state = model.step(x.to(device), state)
        return torch.stack(frames[:length])
