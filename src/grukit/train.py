"""Training: one config dataclass, one Trainer, usable from the command line or a notebook.

>>> from grukit.train import TrainConfig, Trainer            # doctest: +SKIP
>>> trainer = Trainer(TrainConfig(data="jsb", hidden_size=46, epochs=50, out="runs/jsb"))
>>> trainer.fit()["test"]["nll"]                               # doctest: +SKIP

A run folder holds ``config.toml`` (the resolved config; feed it back with ``--config``),
``metrics.jsonl`` (one line per epoch), ``checkpoints/last`` and ``checkpoints/best`` (written
atomically after every epoch; ``last`` carries optimizer, scheduler and RNG state for
``--resume``), ``final.json`` (NLL of the best checkpoint on every split) and ``curves.png``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grukit.backends import BACKENDS
from grukit.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from grukit.configuration import build_config, config_from_dict, config_to_dict, save_config_toml
from grukit.errors import CheckpointError, ConfigError, TrainingError
from grukit.tasks import TASKS, load_task
from grukit.variants import ALL_VARIANTS

__all__ = [
    "TrainConfig",
    "Trainer",
    "evaluate",
    "load_run",
    "packaged_configs",
    "RESUMABLE_KEYS",
]


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults are the main job: a GRU on the
    Bach chorales that ship with music21, a few minutes on 2 CPU cores."""

    task: str = _f("music", "task: music (polyphonic next-frame prediction)")
    data: str = _f(
        "bach", "data set: bach (embedded), jsb, nottingham, musedata, piano-midi, or a path"
    )
    variant: str = _f("gru", "recurrent cell, one of grukit.ALL_VARIANTS")
    hidden_size: int = _f(256, "units per recurrent layer")
    num_layers: int = _f(1, "stacked recurrent layers")
    dropout: float = _f(0.0, "dropout between recurrent layers")
    input_dropout: float = _f(0.0, "dropout on the input frames")
    output_dropout: float = _f(0.0, "dropout before the linear read-out")
    backend: str = _f("auto", "auto, fused, reference or scan (grukit.backends)")
    optimizer: str = _f("adam", "adam or rmsprop")
    lr: float = _f(1e-3, "learning rate")
    weight_decay: float = _f(0.0, "L2 penalty (decoupled for adam: AdamW)")
    schedule: str = _f(
        "plateau", "learning-rate schedule: plateau (halve when valid stalls), cosine, none"
    )
    plateau_patience: int = _f(
        4, "epochs without validation progress before the plateau schedule lowers the rate"
    )
    clip_grad_norm: float = _f(5.0, "clip the gradient's global norm to this (0 = off)")
    weight_noise: float = _f(
        0.05,
        "std of Gaussian noise added to every weight for each mini-batch's forward and "
        "backward pass (Graves 2011; Chung et al. 2014 used 0.075); 0 = off",
    )
    ema: float = _f(
        0.99,
        "decay of an exponential moving average of the weights, which is what is evaluated "
        "and kept as the best checkpoint (0 = off; e.g. 0.99)",
    )
    batch_size: int = _f(8, "sequences per mini-batch")
    epochs: int = _f(120, "maximum number of epochs")
    patience: int = _f(20, "early stopping: epochs without validation progress (0 = off)")
    seed: int = _f(0, "seed of the weights, the data order and dropout")
    threads: int = _f(0, "torch threads (0 = torch's default)")
    device: str = _f(
        "cpu",
        "cpu, cuda, cuda:N, or auto (cuda when available). The fused kernels run on the CPU; "
        "on a GPU the reference path runs (minGRU: the parallel scan)",
    )
    out: str = _f("", "run folder (default runs/<task>-<data>-<variant>-<time>)")
    progress: bool = _f(True, "show a progress bar per epoch")

    def validate(self) -> None:
        checks = [
            (self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}"),
            (
                self.variant in ALL_VARIANTS,
                f"variant must be one of {', '.join(ALL_VARIANTS)}, got {self.variant!r}",
            ),
            (self.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}"),
            (
                self.optimizer in ("adam", "rmsprop"),
                f"optimizer must be adam or rmsprop, got {self.optimizer!r}",
            ),
            (
                self.schedule in ("plateau", "cosine", "none"),
                f"schedule must be plateau, cosine or none, got {self.schedule!r}",
            ),
            (self.hidden_size > 0, f"hidden_size must be positive, got {self.hidden_size}"),
            (self.num_layers > 0, f"num_layers must be positive, got {self.num_layers}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.epochs > 0, f"epochs must be positive, got {self.epochs}"),
            (
                self.lr > 0 and math.isfinite(self.lr),
                f"lr must be a positive number, got {self.lr}",
            ),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (
                self.plateau_patience >= 0,
                f"plateau_patience must be >= 0, got {self.plateau_patience}",
            ),
            (self.clip_grad_norm >= 0, f"clip_grad_norm must be >= 0, got {self.clip_grad_norm}"),
            (0 <= self.ema < 1, f"ema must be in [0, 1), got {self.ema}"),
            (self.weight_noise >= 0, f"weight_noise must be >= 0, got {self.weight_noise}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.threads >= 0, f"threads must be >= 0, got {self.threads}"),
        ]
        for name in ("dropout", "input_dropout", "output_dropout"):
            value = getattr(self, name)
            checks.append((0 <= value < 1, f"{name} must be in [0, 1), got {value}"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        resolve_device(self.device)


#: Keys a resumed run may change; every other key must match the run's saved config.
RESUMABLE_KEYS = frozenset({"epochs", "patience", "threads", "progress", "out", "device"})


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``, checked against what this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device must be cpu, cuda, cuda:N or auto, got {name!r} ({exc})"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but this torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}")
    return device


def build_model(config: TrainConfig, task: Any) -> nn.Module:
    """The model ``config`` describes, shaped for ``task``."""
    return task.build_model(
        config.hidden_size, config.num_layers, config.variant, dropout=config.dropout,
        input_dropout=config.input_dropout, output_dropout=config.output_dropout,
        backend=config.backend,
    )  # fmt: skip


def _default_out(cfg: TrainConfig) -> str:
    data = Path(cfg.data).stem if ("/" in cfg.data or os.sep in cfg.data) else cfg.data
    return os.path.join("runs", f"{cfg.task}-{data}-{cfg.variant}-{time.strftime('%Y%m%d-%H%M%S')}")


def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _Progress:
    """A tqdm bar per epoch, or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="seq", leave=False, dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Trains ``config``'s model on its task; see the module docstring for the run folder.

    ``Trainer(config)`` starts a new run in ``config.out``; ``Trainer.resume(run_dir)`` continues
    a run from its last checkpoint (model, optimizer, scheduler, RNG, early-stopping state).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        task: Any = None,
        log: Callable[[str], object] = print,
        _resuming: bool = False,
    ) -> None:
        config.validate()
        self.config = config
        self.log = log
        if config.threads:
            torch.set_num_threads(config.threads)
        if not config.out:
            config.out = _default_out(config)
        self.run_dir = Path(config.out)
        if not _resuming and (self.run_dir / "checkpoints").exists():
            raise ConfigError(
                f"run folder {self.run_dir} already holds a run; continue it with "
                f"`grukit train --resume {self.run_dir}` or choose another --out"
            )
        torch.manual_seed(config.seed)
        self.task = (
            task
            if task is not None
            else load_task(config.task, config.data, progress=config.progress)
        )
        self.device = resolve_device(config.device)
        self.model = build_model(config, self.task).to(self.device)
        # the weights that are evaluated: an exponential moving average of the trained ones
        self.averaged = copy.deepcopy(self.model) if config.ema > 0 else self.model
        for p in self.averaged.parameters() if config.ema > 0 else ():
            p.requires_grad_(False)
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.epoch = 0  # completed epochs
        self.best_valid = math.inf
        self.best_epoch = 0
        self.since_best = 0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ construction

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = self.model.parameters()
        if c.optimizer == "adam":
            if c.weight_decay:
                return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
            return torch.optim.Adam(params, lr=c.lr)
        return torch.optim.RMSprop(params, lr=c.lr, weight_decay=c.weight_decay)

    def _make_scheduler(self) -> Any:
        c = self.config
        if c.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=0.5, patience=c.plateau_patience
            )
        if c.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        return None

    @classmethod
    def resume(
        cls,
        run_dir: str | os.PathLike[str],
        *,
        overrides: dict[str, Any] | None = None,
        log: Callable[[str], object] = print,
    ) -> Trainer:
        """Continue the run in ``run_dir`` from its last checkpoint.

        ``overrides`` may change only :data:`RESUMABLE_KEYS` (e.g. more ``epochs``); any other
        difference from the saved config is refused, since the checkpoint could not honour it.
        """
        run = Path(run_dir)
        config = _load_run_config(run)
        unknown = sorted(set(overrides or {}) - {f.name for f in fields(TrainConfig)})
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)}; valid keys are: "
                + ", ".join(f.name for f in fields(TrainConfig))
            )
        changed = {
            k: v for k, v in (overrides or {}).items() if k != "out" and getattr(config, k) != v
        }
        if "epochs" in changed and config.schedule == "cosine":
            raise CheckpointError(
                f"cannot resume {run} with epochs={changed['epochs']}: its cosine learning-rate "
                f"schedule is fixed to the run's {config.epochs} epochs"
            )
        bad = {k: v for k, v in changed.items() if k not in RESUMABLE_KEYS}
        if bad:
            details = ", ".join(
                f"{k}={v!r} (the run has {getattr(config, k)!r})" for k, v in bad.items()
            )
            raise CheckpointError(
                f"cannot resume {run} with {details}: only {', '.join(sorted(RESUMABLE_KEYS))} "
                "may change on resume; start a new run for other changes"
            )
        for k, v in changed.items():
            setattr(config, k, v)
        config.out = str(run)
        trainer = cls(config, log=log, _resuming=True)
        meta = load_checkpoint(
            run / "checkpoints" / "last",
            model=_resume_state(trainer.model, trainer.averaged),
            optimizer=trainer.optimizer,
            scheduler=trainer.scheduler,
            restore_rng=True,
        )
        state = meta.get("trainer")
        if not isinstance(state, dict):
            raise CheckpointError(f"{run}/checkpoints/last: meta.json has no trainer state")
        trainer.epoch = int(state["epoch"])
        trainer.best_valid = float(state["best_valid"])
        trainer.best_epoch = int(state["best_epoch"])
        trainer.since_best = int(state["since_best"])
        trainer.history = [h for h in _read_metrics(run) if h["epoch"] <= trainer.epoch]
        # an epoch that finished after the last checkpoint will run again: drop its line
        trainer._rewrite_metrics()
        log(f"resuming {run} after epoch {trainer.epoch} (best valid {trainer.metric} "
            f"{trainer.best_valid:.4f} at epoch {trainer.best_epoch})")  # fmt: skip
        return trainer

    @property
    def metric(self) -> str:
        return getattr(self.task, "metric", "loss")

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, split: str) -> dict[str, float]:
        """The task's metric on ``split`` (see :func:`evaluate`), of the evaluated weights."""
        return evaluate(self.task, self.averaged, split)

    # ------------------------------------------------------------------ training

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        # the data order of an epoch depends on (seed, epoch) only, so a resumed run replays it
        return torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        c = self.config
        self.model.train()
        total, count, sequences = 0.0, 0, 0
        start = time.perf_counter()
        bar = _Progress(c.progress, self.task.sequences("train"), f"epoch {epoch}/{c.epochs}")
        try:
            batches = self.task.batches(
                "train", c.batch_size, shuffle=True, generator=self._epoch_generator(epoch)
            )
            for step, batch in enumerate(batches, 1):
                clean = self._add_weight_noise()
                loss_sum, n = self.task.loss(self.model, batch)
                loss = loss_sum / n
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the training loss became {loss.item()} at epoch {epoch}, step {step}; "
                        "try a lower --lr or a --clip-grad-norm"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clean is not None:  # the gradient at the noisy weights moves the clean ones
                    with torch.no_grad():
                        torch._foreach_copy_(list(self.model.parameters()), clean)
                if c.clip_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad_norm)
                self.optimizer.step()
                if c.ema > 0:
                    with torch.no_grad():
                        torch._foreach_lerp_(
                            list(self.averaged.parameters()),
                            list(self.model.parameters()),
                            1 - c.ema,
                        )
                total += loss_sum.item()
                count += n
                sequences += batch.sequences
                elapsed = time.perf_counter() - start
                bar.update(
                    batch.sequences, loss=f"{total / count:.3f}", seq_s=f"{sequences / elapsed:.0f}"
                )
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        return {
            "train_loss": total / count,
            "seconds": seconds,
            "sequences_per_s": sequences / seconds,
        }

    def _add_weight_noise(self) -> list[torch.Tensor] | None:
        """Perturb the weights for one mini-batch; return the clean weights to restore."""
        std = self.config.weight_noise
        if std <= 0:
            return None
        params = list(self.model.parameters())
        with torch.no_grad():
            clean = [p.detach().clone() for p in params]
            for p in params:
                p.add_(torch.randn_like(p), alpha=std)
        return clean

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or early stopping; return the best checkpoint's metrics."""
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config_toml(c, self.run_dir / "config.toml")
        if self.epoch == 0:
            self.log(
                f"training {c.variant} ({_count_parameters(self.model)} parameters, "
                f"{c.num_layers}x{c.hidden_size}) on {self.task.describe()}; "
                f"run folder {self.run_dir}"
            )
        stopped = "epochs"
        while self.epoch < c.epochs:
            if c.patience and self.since_best >= c.patience:
                stopped = "early stopping"
                break
            epoch = self.epoch + 1
            row: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_epoch(epoch))
            row["valid_" + self.metric] = valid = self.evaluate("valid")[self.metric]
            if not math.isfinite(valid):
                raise TrainingError(f"the validation {self.metric} became {valid} at epoch {epoch}")
            if self.scheduler is not None:
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(valid)
                else:
                    self.scheduler.step()
            improved = valid < self.best_valid
            if improved:
                self.best_valid, self.best_epoch, self.since_best = valid, epoch, 0
            else:
                self.since_best += 1
            self.epoch = epoch
            self.history.append(row)
            if improved:
                self._save("best")
            self._append_metrics(row)
            self._save("last")
            self.log(
                f"epoch {epoch:3d}  train {row['train_loss']:.4f}  valid {valid:.4f}"
                f"{'  *' if improved else ''}  {row['seconds']:.2f}s "
                f"({row['sequences_per_s']:.0f} seq/s)"
            )
        else:
            if c.patience and self.since_best >= c.patience:
                stopped = "early stopping"
        return self._finish(stopped)

    def _finish(self, stopped: str) -> dict[str, Any]:
        load_checkpoint(self.run_dir / "checkpoints" / "best", model=self.averaged)
        result: dict[str, Any] = {
            "run": str(self.run_dir),
            "variant": self.config.variant,
            "parameters": _count_parameters(self.averaged),
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "stopped_by": stopped,
            "seconds_per_epoch": (
                sum(h["seconds"] for h in self.history) / len(self.history) if self.history else 0.0
            ),
        }
        for split in ("train", "valid", "test"):
            result[split] = self.evaluate(split)
        atomic_write_json(self.run_dir / "final.json", result)
        try:
            from grukit.plots import plot_curves

            plot_curves(self.history, self.run_dir / "curves.png", metric=self.metric)
        except Exception as exc:  # a plot must never cost a finished run
            self.log(f"(could not draw the curves: {exc})")
        return result

    # ------------------------------------------------------------------ run folder

    def _save(self, which: str) -> None:
        meta = {
            "config": config_to_dict(self.config),
            "epoch": self.epoch,
            "metrics": self.history[-1] if self.history else {},
            "trainer": {
                "epoch": self.epoch,
                "best_valid": self.best_valid,
                "best_epoch": self.best_epoch,
                "since_best": self.since_best,
            },
        }
        save_checkpoint(
            self.run_dir / "checkpoints" / which,
            model=_resume_state(self.model, self.averaged) if which == "last" else self.averaged,
            optimizer=self.optimizer if which == "last" else None,
            scheduler=self.scheduler if which == "last" else None,
            meta=meta,
            rng=which == "last",
        )

    def _append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _rewrite_metrics(self) -> None:
        text = "".join(json.dumps(h) + "\n" for h in self.history)
        atomic_write_text(self.run_dir / "metrics.jsonl", text)


def _resume_state(model: nn.Module, averaged: nn.Module) -> nn.Module:
    """What ``checkpoints/last`` holds of the weights: the trained model and, when the run keeps
    an average of its weights (``ema``), that average too; ``best`` holds the evaluated weights."""
    if averaged is model:
        return model
    return nn.ModuleDict({"model": model, "averaged": averaged})


@torch.no_grad()
def evaluate(task: Any, model: nn.Module, split: str, batch_size: int = 32) -> dict[str, float]:
    """Average loss per predicted frame of ``split`` (for music: NLL per frame), in eval mode."""
    model.eval()
    total, count = 0.0, 0
    for batch in task.batches(split, batch_size):
        loss, n = task.loss(model, batch)
        total += float(loss)
        count += n
    return {getattr(task, "metric", "loss"): total / count, "frames": count}


def _read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: the epochs after it will run again
    return rows


def _load_run_config(run: Path) -> TrainConfig:
    if not (run / "checkpoints").is_dir():
        raise CheckpointError(f"{run} is not a grukit run folder (no checkpoints/ in it)")
    meta = read_meta(run / "checkpoints" / "last")
    if "config" not in meta:
        raise CheckpointError(f"{run}/checkpoints/last/meta.json holds no config")
    return config_from_dict(TrainConfig, meta["config"], source=f"{run}/checkpoints/last/meta.json")


def load_run(
    run_dir: str | os.PathLike[str],
    *,
    which: str = "best",
    data: str | None = None,
    device: str | None = None,
) -> tuple[TrainConfig, Any, nn.Module]:
    """``(config, task, model)`` of a finished or running run, weights from ``which``."""
    run = Path(run_dir)
    config = _load_run_config(run)
    if data is not None:
        config.data = data
    if device is not None:
        config.device = device
    task = load_task(config.task, config.data, progress=False)
    model = build_model(config, task)
    model.to(resolve_device(config.device))
    if which == "last" and config.ema > 0:  # last holds the trained and the averaged weights
        averaged = copy.deepcopy(model)
        load_checkpoint(run / "checkpoints" / which, model=_resume_state(model, averaged))
        model = averaged
    else:
        load_checkpoint(run / "checkpoints" / which, model=model)
    model.eval()
    return config, task, model


CONFIG_DIR = Path(__file__).parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs that ship with grukit (``--config NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def resolve_config_path(name: str) -> Path:
    """A TOML file: ``name`` itself, or the packaged config called ``name``."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{path.stem}.toml"
    if path.parent == Path(".") and packaged.is_file():
        return packaged
    raise ConfigError(
        f"no config file {name!r}; give a TOML file or one of the packaged configs: "
        f"{', '.join(packaged_configs())}"
    )


def config_from_args(
    toml_path: str | None, overrides: dict[str, Any], announce: Callable = print
) -> TrainConfig:
    """The config of a new run: defaults, then a TOML file (or packaged config), then flags."""
    path = resolve_config_path(toml_path) if toml_path else None
    return build_config(TrainConfig, toml_path=path, overrides=overrides, announce=announce)
