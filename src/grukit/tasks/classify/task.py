"""Sequence classification: one label per multivariate sequence of any length.

The model (:class:`grukit.models.SequenceClassifier`) reads a packed batch with any grukit
variant, deep and optionally bidirectional, and classifies the last valid state of each
direction or a mean / max over valid steps. The loss is the cross-entropy summed over the
batch's sequences (optionally class-weighted). Metrics come from the confusion matrix summed over
batches: accuracy (watched), macro-F1, balanced accuracy, per-class recall, cross-entropy.

Data (:mod:`grukit.tasks.classify.data`): UEA/UCR ``.ts`` pairs, ``.npz`` arrays, and the named
sets ``japanesevowels`` (shipped inside the sktime wheel: works offline) and ``mnist-rows`` /
``mnist-pixels`` / ``mnist-pixels-permuted`` (downloaded once). The validation split is carved
from the training file, stratified, with ``task.split_seed``; the test file is never used for
model selection. Channels are standardised with the statistics of the training part only.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from grukit.errors import ConfigError, DataError
from grukit.models import POOLINGS, SequenceClassifier
from grukit.tasks.base import Task, TaskConfig, opt
from grukit.tasks.classify.data import (
    ClassificationData,
    SequenceSet,
    load_classification,
    stratified_split,
)
from grukit.tasks.classify.metrics import confusion_matrix, metrics_from_confusion, plot_confusion

__all__ = ["ClassifyBatch", "ClassifyConfig", "ClassifyTask"]


@dataclass
class ClassifyConfig(TaskConfig):
    """``[task]`` of the classification task."""

    name: str = opt("classify", "task: classify (one label per sequence)")
    data: str = opt(
        "japanesevowels",
        "japanesevowels, mnist-rows, mnist-pixels, mnist-pixels-permuted, a UEA/UCR folder or "
        "NAME_TRAIN.ts / NAME_TEST.ts file, or an .npz file",
    )
    pooling: str = opt("last", "what the head reads: last (valid state per direction), mean, max")
    valid_fraction: float = opt(0.2, "share of the training file held out for validation")
    split_seed: int = opt(0, "seed of the stratified validation split")
    class_weights: str = opt("none", "none, or balanced (weights inverse to class frequency)")
    standardise: bool = opt(True, "scale each channel by the training part's mean and std")

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"task.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}"
            )
        if not 0 < self.valid_fraction < 1:
            raise ConfigError(f"task.valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.class_weights not in ("none", "balanced"):
            raise ConfigError(
                f"task.class_weights must be none or balanced, got {self.class_weights!r}"
            )


@dataclass
class ClassifyBatch:
    inputs: PackedSequence  # the batch's sequences, packed (enforce_sorted=False)
    targets: Tensor  # (N,) int64 class indices, in input order
    index: Tensor  # (N,) positions of the cases within their split
    items: int


SPLITS = ("train", "valid", "test")


class ClassifyTask(Task):
    """Sequence classification on a :class:`ClassificationData` (see the module docstring)."""

    name = "classify"
    Config = ClassifyConfig
    monitor = "accuracy"
    tiebreak = "cross_entropy"
    modes = {
        "accuracy": "max",
        "macro_f1": "max",
        "balanced_accuracy": "max",
        "cross_entropy": "min",
    }
    headline = ("accuracy", "macro_f1", "cross_entropy")
    unit = "seq"
    defaults = {
        "model.hidden_size": 64,
        "optim.lr": 3e-3,
        "optim.batch_size": 16,
        "optim.epochs": 60,
        "optim.patience": 20,
        "optim.weight_noise": 0.0,
        "optim.ema": 0.0,
    }

    def __init__(
        self,
        data: ClassificationData,
        config: ClassifyConfig | None = None,
        *,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config or ClassifyConfig(data=data.name)
        self.data = data
        state = dict(state or {})
        self.classes: list[str] = list(state.get("classes", data.classes))
        if list(data.classes) != self.classes:
            raise DataError(
                f"{data.name}: its classes {data.classes} differ from the run's {self.classes}"
            )
        train_idx, valid_idx = stratified_split(
            data.train.y, self.config.valid_fraction, self.config.split_seed
        )
        parts = {
            "train": data.train.subset(train_idx),
            "valid": data.train.subset(valid_idx),
            "test": data.test,
        }
        if "mean" in state:
            self.mean = np.asarray(state["mean"], dtype=np.float32)
            self.std = np.asarray(state["std"], dtype=np.float32)
        else:
            self.mean, self.std = _channel_stats(parts["train"], self.config.standardise)
        if self.mean.shape != (data.channels,):
            raise DataError(
                f"{data.name} has {data.channels} channels per step; the run was trained on "
                f"{self.mean.shape[0]}"
            )
        self._x = {s: [self._scale(x) for x in parts[s].x] for s in SPLITS}
        self._y = {s: torch.as_tensor(parts[s].y, dtype=torch.long) for s in SPLITS}
        for s in SPLITS:
            if len(self._x[s]) == 0:
                raise DataError(f"{data.name}: the {s} split holds no cases")
        counts = np.bincount(parts["train"].y, minlength=len(self.classes)).astype(np.float64)
        self.weights: Tensor | None = None
        if self.config.class_weights == "balanced":
            w = counts.sum() / (len(self.classes) * np.maximum(counts, 1))
            self.weights = torch.as_tensor(w, dtype=torch.float32)

    def _scale(self, x: np.ndarray) -> Tensor:
        return torch.from_numpy(((x - self.mean) / self.std).astype(np.float32, copy=False))

    # ------------------------------------------------------------------ Task

    @classmethod
    def load(
        cls, config: TaskConfig, *, progress: bool = True, state: Mapping[str, Any] | None = None
    ) -> ClassifyTask:
        assert isinstance(config, ClassifyConfig)
        return cls(load_classification(config.data, progress=progress), config, state=state)

    def state(self) -> dict[str, Any]:
        return {"classes": self.classes, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(self._x[s])}" for s in SPLITS)
        return (
            f"{self.data.name}: {len(self.classes)} classes, {self.channels} channels; "
            f"{sizes} sequences"
        )

    def size(self, split: str) -> int:
        return len(self._x[split])

    def case(self, split: str, index: int) -> tuple[Tensor, int]:
        """Case ``index`` of ``split`` (data set order): scaled features ``(T, C)``, class."""
        return self._x[split][index], int(self._y[split][index])

    def build_model(self, model: Any, cell: Any = None) -> nn.Module:
        return SequenceClassifier(
            self.channels, len(self.classes), model, self.config.pooling, cell=cell
        )

    def batches(
        self, split: str, batch_size: int, *, shuffle: bool = False, generator: Any = None
    ) -> Iterator[ClassifyBatch]:
        xs, ys = self._x[split], self._y[split]
        if shuffle:
            order = torch.randperm(len(xs), generator=generator)
        else:  # similar lengths together: less work per step for the packed layout
            order = torch.as_tensor(
                sorted(range(len(xs)), key=lambda i: -xs[i].shape[0]), dtype=torch.long
            )
        for start in range(0, len(xs), batch_size):
            index = order[start : start + batch_size]
            yield ClassifyBatch(
                inputs=pack_sequence([xs[i] for i in index.tolist()], enforce_sorted=False),
                targets=ys[index],
                index=index,
                items=len(index),
            )

    def _logits(self, model: nn.Module, batch: ClassifyBatch) -> Tensor:
        device = next(model.parameters()).device
        return model(batch.inputs.to(device))

    def loss(self, model: nn.Module, batch: ClassifyBatch) -> tuple[Tensor, int]:
        """Summed (class-weighted) cross-entropy over the batch's sequences, and their number."""
        logits = self._logits(model, batch)
        weight = self.weights.to(logits.device) if self.weights is not None else None
        target = batch.targets.to(logits.device)
        return F.cross_entropy(logits, target, weight=weight, reduction="sum"), batch.items

    def eval_sums(self, model: nn.Module, batch: ClassifyBatch) -> dict[str, Any]:
        logits = self._logits(model, batch).float()
        target = batch.targets.to(logits.device)
        return {
            "cross_entropy": float(F.cross_entropy(logits, target, reduction="sum")),
            "count": batch.items,
            "confusion": confusion_matrix(
                batch.targets.numpy(), logits.argmax(1).cpu().numpy(), len(self.classes)
            ),
        }

    def metrics(self, sums: Mapping[str, Any], split: str) -> dict[str, Any]:
        """accuracy, macro_f1, balanced_accuracy, recall_per_class, cross_entropy (mean nats),
        count and the confusion matrix (rows: true class, columns: predicted)."""
        result = metrics_from_confusion(sums["confusion"])
        result["cross_entropy"] = sums["cross_entropy"] / sums["count"]
        result["count"] = sums["count"]
        result["confusion"] = np.asarray(sums["confusion"]).tolist()
        return result

    def report(
        self, model: nn.Module, run_dir: Path, result: Mapping[str, Any], *, log: Any = print
    ) -> dict[str, str]:
        """``confusion.png``: the test split's confusion matrix of the best checkpoint."""
        path = run_dir / "confusion.png"
        cm = np.asarray(result["test"]["confusion"])
        acc = result["test"]["accuracy"]
        plot_confusion(cm, self.classes, path, title=f"{self.data.name} test, accuracy {acc:.4f}")
        return {"confusion": str(path)}

    # ------------------------------------------------------------------ predictions

    @torch.no_grad()
    def predict_proba(self, model: nn.Module, xs: list[np.ndarray], batch_size: int = 64) -> Tensor:
        """Class probabilities ``(N, K)`` of raw (unscaled) sequences ``xs[i]: (T_i, C)``."""
        model.eval()
        for i, x in enumerate(xs):
            if x.ndim != 2 or x.shape[1] != self.channels or x.shape[0] < 1:
                raise DataError(
                    f"case {i}: expected an array of shape (T, {self.channels}) with T >= 1, "
                    f"got {tuple(x.shape)}"
                )
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(xs), batch_size):
            chunk = [
                self._scale(np.asarray(x, dtype=np.float32)) for x in xs[start : start + batch_size]
            ]
            packed = pack_sequence(chunk, enforce_sorted=False).to(device)
            out.append(torch.softmax(model(packed).float(), dim=1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def predict_csv(self, model: nn.Module, data: str, out: Path) -> int:
        """Write ``case, predicted, [true,] p_<class>...`` for every case of ``data`` (a ``.ts``
        file: its cases; a folder or pair: the test file; an ``.npz``: ``x_test``)."""
        from grukit.io import atomic_write_text

        cases = _cases_of(data)
        proba = self.predict_proba(model, cases.x)
        rows = [["case", "predicted", "true", *(f"p_{c}" for c in self.classes)]]
        for i in range(len(cases.x)):
            row = [str(i), self.classes[int(proba[i].argmax())], cases.true[i]]
            rows.append(row + [f"{float(p):.6g}" for p in proba[i]])
        import io

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        atomic_write_text(out, buf.getvalue())
        return len(cases.x)


@dataclass
class _Cases:
    x: list[np.ndarray]
    true: list[str]  # the file's label of each case ("" where it has none)


def _cases_of(data: str) -> _Cases:
    from grukit.tasks.classify.data import read_ts

    path = Path(data)
    if path.suffix.lower() == ".ts" and path.is_file():
        xs, labels, _ = read_ts(path, labelled=False)  # a file to classify may have none
        return _Cases(xs, [str(lb) for lb in labels])
    loaded = load_classification(data)
    return _Cases(loaded.test.x, [loaded.classes[int(y)] for y in loaded.test.y])


def _channel_stats(part: SequenceSet, standardise: bool) -> tuple[np.ndarray, np.ndarray]:
    channels = part.x[0].shape[1]
    if not standardise:
        return np.zeros(channels, np.float32), np.ones(channels, np.float32)
    frames = np.concatenate(part.x, axis=0).astype(np.float64)
    std = frames.std(0)
    return frames.mean(0).astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)
