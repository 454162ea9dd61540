"""The task contract: what a task module declares so that the trainer, the CLI, ``compare`` and
the plots need nothing task-specific.

A task is one module (``tasks/<name>/task.py`` or ``tasks/<name>.py``) with a :class:`Task`
subclass and one line in :data:`grukit.tasks.REGISTRY`. It declares:

* ``Config``: a dataclass subclass of :class:`TaskConfig` (``name``, ``data`` and the task's own
  options, validated in its ``validate()``); it is the ``[task]`` section of a run config;
* its data (:meth:`Task.load` from a config, or a constructor taking data already in memory);
* its model (:meth:`Task.build_model` from the ``[model]`` and ``[cell]`` sections);
* its loss as ``(summed loss, count)`` (:meth:`Task.loss`), which all-reduces exactly;
* its metrics: :meth:`Task.eval_sums` returns additive statistics of a batch, summed over
  batches, and :meth:`Task.metrics` turns the sums into named values; ``modes`` says for each
  metric whether lower (``"min"``) or higher (``"max"``) is better, and ``monitor`` names the
  one early stopping and the best checkpoint watch;
* its reports (:meth:`Task.report`: plots, samples, prediction files) and the unit its progress
  bar counts (``unit``);
* ``defaults``: its preferred values of other sections' keys (``{"optim.ema": 0.0}``), applied
  below a TOML file and the flags;
* optionally, what it carries from one training batch to the next (:meth:`Task.progress`,
  :meth:`Task.restore_progress`: the character LM's hidden state and its place in the text,
  kept in ``checkpoints/last`` so that a resumed run continues exactly) and what changes with
  the epoch (:meth:`Task.start_epoch`: a teacher-forcing schedule).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from torch import Tensor, nn

__all__ = ["Batch", "Task", "TaskConfig", "add_sums", "opt"]


def opt(default: Any, help: str) -> Any:
    """A config field with a default and a help text (shown by ``--help`` and in config.toml)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TaskConfig:
    """The ``[task]`` section: which task, on which data; subclasses add the task's options."""

    name: str = opt("music", "task: " + "music, classify, forecast, charlm, seq2seq")
    data: str = opt("bach", "data set: a name the task knows, or a path")

    #: options that only shape reports, so a resumed run may change them
    resumable: ClassVar[frozenset[str]] = frozenset()

    def validate(self) -> None:
        """Check the task's own options (subclasses extend this)."""


class Batch(Protocol):
    """A mini-batch; ``items`` is what the progress bar counts (sequences, windows, ...)."""

    items: int


def add_sums(total: dict[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """``total += part`` key by key (floats, ints or numpy arrays)."""
    for key, value in part.items():
        total[key] = total[key] + value if key in total else value
    return total


class Task(ABC):
    """A data set, the model that fits it, its loss and its metrics (see the module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type[TaskConfig]] = TaskConfig
    monitor: ClassVar[str]
    #: a second metric that decides between epochs whose monitor values are equal (a small
    #: validation set often gives equal accuracies; the lower cross-entropy is then better)
    tiebreak: ClassVar[str | None] = None
    modes: ClassVar[Mapping[str, str]]
    headline: ClassVar[tuple[str, ...]] = ()
    unit: ClassVar[str] = "seq"
    defaults: ClassVar[Mapping[str, Any]] = {}
    #: ``grukit compare``: models always in the comparison (``(variant, units)``), the packaged
    #: config it starts from and the learning rates it tries, when the user gives none
    compare_models: ClassVar[tuple[tuple[str, int], ...]] = ()
    compare_config: ClassVar[str | None] = None
    #: why the task's batches cannot be split over data-parallel ranks (None: they can; each
    #: rank then takes every N-th batch, :mod:`grukit.distributed`)
    unshardable: ClassVar[str | None] = None
    compare_lrs: ClassVar[tuple[float, ...]] = ()

    config: TaskConfig

    # ------------------------------------------------------------------ data

    @classmethod
    @abstractmethod
    def load(
        cls, config: TaskConfig, *, progress: bool = True, state: Mapping[str, Any] | None = None
    ) -> Task:
        """The task on ``config.data``; ``state`` is what :meth:`state` saved in a run."""

    def state(self) -> dict[str, Any]:
        """JSON data a run saves so that :meth:`load` rebuilds the same task (classes, scaler)."""
        return {}

    @abstractmethod
    def describe(self) -> str:
        """One line: the data set and the size of each split."""

    @abstractmethod
    def size(self, split: str) -> int:
        """How many ``unit`` items ``split`` holds."""

    @abstractmethod
    def batches(
        self, split: str, batch_size: int, *, shuffle: bool = False, generator: Any = None
    ) -> Iterator[Batch]:
        """Mini-batches of ``split``; with ``shuffle``, in an order drawn from ``generator``."""

    def start_epoch(self, epoch: int) -> None:
        """Called before training epoch ``epoch`` (1-based), also on resume."""
        return None

    def progress(self) -> Any:
        """What training carries between batches and epochs (tensors, numbers, lists, dicts),
        saved in ``checkpoints/last``; None when nothing is carried."""
        return None

    def restore_progress(self, state: Any) -> None:
        """Take back what :meth:`progress` saved (None: the checkpoint holds nothing)."""
        return None

    def reset_progress(self) -> None:
        """Forget what an earlier run carried: every new trainer calls it, so one loaded task
        serves many runs (``grukit compare``, ``grukit tune``) as a freshly loaded one would."""
        return None

    # ------------------------------------------------------------------ model and loss

    @abstractmethod
    def build_model(self, model: Any, cell: Any = None) -> nn.Module:
        """The network that the [model] and [cell] sections describe: ``model`` a
        :class:`grukit.runconfig.ModelConfig`, ``cell`` a :class:`grukit.runconfig.CellConfig`
        (None: the plain cell)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        """``(summed loss, count)``: the training objective is ``sum / count``."""

    # ------------------------------------------------------------------ metrics

    def eval_sums(self, model: nn.Module, batch: Batch) -> dict[str, Any]:
        """Additive statistics of one batch (model in eval mode, no grad); summed over batches."""
        loss, count = self.loss(model, batch)
        return {"loss": float(loss), "count": count}

    def metrics(self, sums: Mapping[str, Any], split: str) -> dict[str, Any]:
        """Named metrics of a split from its summed statistics."""
        return {self.monitor: sums["loss"] / sums["count"], "count": sums["count"]}

    def better(self, a: float, b: float) -> bool:
        """Whether monitor value ``a`` is strictly better than ``b``."""
        return a > b if self.modes[self.monitor] == "max" else a < b

    def improves(self, new: Mapping[str, Any], best: float, best_tie: float) -> bool:
        """Whether validation metrics ``new`` beat the best epoch's ``(monitor, tiebreak)``."""
        value = new[self.monitor]
        if self.better(value, best):
            return True
        if self.tiebreak is None or value != best:
            return False
        tie = new[self.tiebreak]
        return tie > best_tie if self.modes[self.tiebreak] == "max" else tie < best_tie

    def worst_of(self, metric: str) -> float:
        """The value of ``metric`` every real value beats."""
        return -math.inf if self.modes[metric] == "max" else math.inf

    @property
    def worst(self) -> float:
        """The monitor value every real value beats."""
        return self.worst_of(self.monitor)

    def paper_results(self) -> dict[str, Any] | None:
        """Published numbers for this data set, to print beside a comparison: ``{"name",
        "source", "checked", "rows": {variant: {split: value of the monitor}}}``, or None."""
        return None

    # ------------------------------------------------------------------ reports

    def report(
        self, model: nn.Module, run_dir: Path, result: Mapping[str, Any], *, log: Any = print
    ) -> dict[str, str]:
        """Write the task's figures and files into ``run_dir``; return ``{what: path}``."""
        return {}

    def summary(self, result: Mapping[str, Any]) -> str:
        """The lines printed after training: each headline metric on every split."""
        splits = [s for s in ("train", "valid", "test") if s in result]
        lines = []
        for name in self.headline or (self.monitor,):
            values = ", ".join(_fmt(s, result[s].get(name)) for s in splits)
            lines.append(f"{name}: {values}")
        return "\n".join(lines)


def _fmt(name: str, value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{name} {value:.4f}"
    return f"{name} {value}"
