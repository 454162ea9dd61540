"""Polyphonic music modelling (Boulanger-Lewandowski et al. 2012; Chung et al. 2014, sec. 4.1).

Each frame is an 88-key binary vector (MIDI 21-108). The model reads frames ``1..t`` and
predicts frame ``t+1`` as 88 independent Bernoulli variables (a recurrent stack, a linear layer,
88 sigmoids). The metric is Chung et al.'s average negative log-likelihood per time step: the
sum over the 88 keys of the Bernoulli NLL, averaged over every predicted frame of the split
(frames ``2..T`` of each sequence, as in later benchmark code: the first frame has no context).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from grukit.errors import ConfigError, DataError
from grukit.models import SequenceModel
from grukit.tasks.base import Task, TaskConfig, opt
from grukit.tasks.music.chung2014 import CHUNG_MODELS, PAPER_CHECKED, PAPER_TABLE2, identify_dataset
from grukit.tasks.music.pianoroll import NUM_KEYS, PianoRollDataset
from grukit.tasks.music.polyphonic import load_polyphonic

__all__ = ["MusicBatch", "MusicConfig", "MusicTask"]


@dataclass
class MusicConfig(TaskConfig):
    """``[task]`` of the music task."""

    name: str = opt("music", "task: music (polyphonic next-frame prediction)")
    data: str = opt(
        "bach", "data set: bach (embedded), jsb, nottingham, musedata, piano-midi, or a path"
    )
    sample_length: int = opt(64, "frames of the sample drawn at the end of training (0: none)")

    resumable: ClassVar[frozenset[str]] = frozenset({"sample_length"})

    def validate(self) -> None:
        if not 0 <= self.sample_length <= 100_000:
            raise ConfigError(
                f"task.sample_length must be in [0, 100000], got {self.sample_length}"
            )


@dataclass
class MusicBatch:
    inputs: PackedSequence  # frames 1..T-1 of each sequence
    targets: PackedSequence  # frames 2..T, packed in the same order
    items: int  # sequences
    frames: int  # predicted frames


class MusicTask(Task):
    """Next-frame prediction on a :class:`PianoRollDataset` (see the module docstring)."""

    name = "music"
    Config = MusicConfig
    monitor = "nll"
    modes = {"nll": "min"}
    headline = ("nll",)
    unit = "seq"
    compare_models = CHUNG_MODELS
    compare_config = "chung2014"
    compare_lrs = (0.0005, 0.001, 0.002)
    input_size = NUM_KEYS
    output_size = NUM_KEYS

    def __init__(self, dataset: PianoRollDataset, config: MusicConfig | None = None) -> None:
        self.config = config or MusicConfig(data=dataset.name)
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
    def load(
        cls, config: TaskConfig, *, progress: bool = True, state: Mapping[str, Any] | None = None
    ) -> MusicTask:
        assert isinstance(config, MusicConfig)
        return cls(load_polyphonic(config.data, progress=progress), config)

    def describe(self) -> str:
        parts = [
            f"{split} {len(self._tensors[split])} sequences / {self.frames(split)} predicted frames"
            for split in ("train", "valid", "test")
        ]
        return f"{self.dataset.name}: " + ", ".join(parts)

    def size(self, split: str) -> int:
        return len(self._tensors[split])

    def sequence(self, split: str, index: int) -> Tensor:
        """Sequence ``index`` of ``split``: ``(T, 88)`` float32."""
        return self._tensors[split][index]

    def frames(self, split: str) -> int:
        return sum(s.shape[0] - 1 for s in self._tensors[split])

    def build_model(self, model: Any, cell: Any = None) -> nn.Module:
        if model.bidirectional:
            raise ConfigError(
                "the music task predicts the next frame from the past only: "
                "model.bidirectional must be false"
            )
        return SequenceModel(self.input_size, self.output_size, model, cell=cell)

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
                items=len(chunk),
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

    def metrics(self, sums: Mapping[str, Any], split: str) -> dict[str, Any]:
        """``nll``: summed Bernoulli NLL per predicted frame; ``frames``: their number."""
        return {"nll": sums["loss"] / sums["count"], "frames": sums["count"]}

    def paper_results(self) -> dict[str, Any] | None:
        """Chung et al. 2014, Table 2, when the data set is one of its four benchmarks."""
        name = identify_dataset(self.config.data)
        if name is None:
            return None
        rows = {v: {"train": tr, "test": te} for v, (tr, te) in PAPER_TABLE2[name].items()}
        return {
            "name": name, "source": "Chung et al. 2014, Table 2",
            "checked": name in PAPER_CHECKED, "rows": rows,
        }  # fmt: skip

    def report(
        self, model: nn.Module, run_dir: Path, result: Mapping[str, Any], *, log: Any = print
    ) -> dict[str, str]:
        """A sample of ``sample_length`` frames (MIDI and piano-roll PNG) in ``samples/``."""
        if self.config.sample_length <= 0:
            return {}
        midi, png = self.write_sample(
            model, run_dir / "samples", self.config.sample_length, seed=result.get("seed", 0)
        )
        return {"sample": f"{midi}  (piano roll {png})"}

    def write_sample(
        self,
        model: nn.Module,
        folder: Path,
        length: int,
        *,
        temperature: float = 1.0,
        seed: int = 0,
        prime: int = 0,
    ) -> tuple[Path, Path]:
        """Sample ``length`` frames into ``folder/sample-seed<seed>.{mid,png}``."""
        from grukit.tasks.music.midi import plot_piano_roll, write_midi

        g = torch.Generator().manual_seed(seed)
        primer = self.sequence("test", 0)[:prime] if prime > 0 else None
        roll = self.sample(model, length, prime=primer, temperature=temperature, generator=g)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"sample-seed{seed}"
        midi, png = folder / f"{stem}.mid", folder / f"{stem}.png"
        write_midi(roll.numpy(), midi)
        plot_piano_roll(
            roll.numpy(), png, title=f"sampled, {length} quarter notes, temperature {temperature}"
        )
        return midi, png

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
