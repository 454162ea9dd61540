"""Training: one Trainer for every task, usable from the command line or a notebook.

>>> from grukit.train import Trainer, make_config               # doctest: +SKIP
>>> trainer = Trainer(make_config(data="jsb", hidden_size=46, epochs=50, out="runs/jsb"))
>>> trainer.fit()["test"]["nll"]                                # doctest: +SKIP

The trainer knows nothing of any task: it asks the task (:class:`grukit.tasks.base.Task`) for
batches, the loss as ``(sum, count)``, the metrics and which one to watch, and its reports.

A run folder is grukit's own (:mod:`grukit.rundir`: a marker file, a lock held for the whole
run). It holds ``config.toml`` (the resolved config; feed it back with ``--config``),
``metrics.jsonl`` (one line per epoch), ``checkpoints/last`` and ``checkpoints/best`` (written
atomically after every epoch, each with the config and the task's state in its meta; ``last``
also carries optimizer, scheduler and RNG state for ``--resume``), ``final.json`` (the task's
metrics of the best checkpoint on every split), ``curves.png`` and the task's reports.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from grukit import rundir
from grukit.checkpoint import (
    atomic_write_json,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    validate_trainer_meta,
)
from grukit.distributed import Distributed
from grukit.errors import CheckpointError, ConfigError, DataError, TrainingError
from grukit.runconfig import (
    RESUMABLE_KEYS,
    RunConfig,
    _canonical,
    build_run_config,
    make_config,
    packaged_configs,
    resolve_config_path,
    resolve_device,
    run_config_from_dict,
)
from grukit.tasks import load_task
from grukit.tasks.base import Task, add_sums

__all__ = [
    "RESUMABLE_KEYS",
    "RunConfig",
    "Trainer",
    "build_model",
    "config_from_args",
    "evaluate",
    "load_run",
    "make_config",
    "packaged_configs",
]


def build_model(config: RunConfig, task: Task) -> nn.Module:
    """The model ``config.model`` and ``config.cell`` describe, shaped for ``task``; an
    impossible size is a ConfigError, not a crash."""
    try:
        return task.build_model(config.model, config.cell)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, MemoryError) or "memory" in str(exc).lower():
            raise ConfigError(
                f"cannot allocate a model of {config.model.num_layers} x "
                f"{config.model.hidden_size} units: not enough memory"
            ) from None
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _Progress:
    """A tqdm bar per epoch, or nothing."""

    def __init__(self, enabled: bool, total: int | None, desc: str, unit: str) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Trains ``config``'s model on its task; see the module docstring for the run folder.

    ``Trainer(config)`` prepares a new run in ``config.run.out``; ``Trainer.resume(run_dir)``
    continues a run from its last checkpoint (model, optimizer, scheduler, RNG, early-stopping
    and weight-average state). Nothing is written before :meth:`fit`.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        task: Task | None = None,
        log: Callable[[str], object] = print,
        on_epoch: Callable[[dict[str, Any]], object] | None = None,
        _resuming: bool = False,
    ) -> None:
        config = copy.deepcopy(config)  # the caller's object is never changed
        self.config = config
        self.log = log
        #: called with each epoch's metrics row once it is saved (an exception it raises, such
        #: as Optuna's TrialPruned, ends the run there with the epoch's checkpoints on disk)
        self.on_epoch = on_epoch
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        if not config.run.out:
            config.run.out = config.default_out()
        self.run_dir = Path(config.run.out)
        self._resuming = _resuming
        torch.manual_seed(config.run.seed)
        self.task = task if task is not None else load_task(
            config.task, progress=config.run.progress
        )  # fmt: skip
        self.task.reset_progress()  # a reused task carries nothing from an earlier run
        self.dist = Distributed.from_env(
            resolve_device(config.run.device), timeout_s=config.run.dist_timeout
        )
        if not self.dist.main:
            self.log = log = _quiet
        self.dist.check_task(self.task)
        self.local_batch_size = self.dist.local_batch_size(config.optim.batch_size)
        self.device = self.dist.device
        self.dtype = config.run.torch_dtype
        self.model = build_model(config, self.task).to(self.device, self.dtype)
        self.train_model = self.dist.wrap(self.model)  # DistributedDataParallel across ranks
        # the weights that are evaluated: an exponential moving average of the trained ones
        ema = config.optim.ema > 0
        self.averaged = copy.deepcopy(self.model) if ema else self.model
        for p in self.averaged.parameters() if ema else ():
            p.requires_grad_(False)
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.epoch = 0  # completed epochs
        self.updates = 0  # optimizer steps taken (the weight average's warm-up clock)
        self.best_valid = self.task.worst
        self.best_tie = self.task.worst_of(self.task.tiebreak) if self.task.tiebreak else 0.0
        self.best_epoch = 0
        self.since_best = 0
        self.history: list[dict[str, Any]] = []
        if not _resuming:  # fail early; claimed under the lock in fit()
            self.dist.run_on_main(lambda: rundir.check_fresh(self.run_dir))

    # ------------------------------------------------------------------ construction

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config.optim
        params = self.model.parameters()
        if c.optimizer == "adam":
            if c.weight_decay:
                return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
            return torch.optim.Adam(params, lr=c.lr)
        return torch.optim.RMSprop(params, lr=c.lr, weight_decay=c.weight_decay)

    def _make_scheduler(self) -> Any:
        c = self.config.optim
        if c.schedule == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode=self.task.modes[self.task.monitor],
                factor=0.5,
                patience=c.plateau_patience,
            )
        if c.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs)
        return None

    @classmethod
    def resume(
        cls,
        run_dir: str | os.PathLike[str],
        *,
        overrides: Mapping[str, Any] | None = None,
        log: Callable[[str], object] = print,
        on_epoch: Callable[[dict[str, Any]], object] | None = None,
    ) -> Trainer:
        """Continue the run in ``run_dir`` from its last checkpoint.

        ``overrides`` (``{"optim.epochs": 200}``, short names too) may change only
        :data:`RESUMABLE_KEYS`; any other difference from the saved config is refused, since the
        checkpoint could not honour it.
        """
        run = Path(run_dir)
        rundir.check_resumable(run)
        meta = read_meta(run / "checkpoints" / "last")
        config = _config_of(meta, f"{run}/checkpoints/last/meta.json")
        state = validate_trainer_meta(meta, f"{run}/checkpoints/last/meta.json")
        given = {_canonical(k, "overrides"): v for k, v in (overrides or {}).items()}
        if "run.out" in given and given["run.out"] and Path(given["run.out"]) != run:
            raise ConfigError(
                f"--resume {run} continues that run in its own folder; do not pass --out "
                f"{given['run.out']} (copy the folder first to branch a run)"
            )
        given.pop("run.out", None)
        config.replace(**given)  # unknown keys and ill-typed values are refused here
        flat = config.flat()
        changed = {k: v for k, v in given.items() if flat[k] != v}
        if "optim.epochs" in changed and config.optim.schedule == "cosine":
            raise CheckpointError(
                f"cannot resume {run} with epochs={changed['optim.epochs']}: its cosine "
                f"learning-rate schedule is fixed to the run's {config.optim.epochs} epochs"
            )
        if "optim.epochs" in changed and changed["optim.epochs"] < state["epoch"]:
            raise ConfigError(
                f"cannot resume {run} with epochs={changed['optim.epochs']}: it has already "
                f"completed {state['epoch']} epochs"
            )
        allowed = RESUMABLE_KEYS | {f"task.{k}" for k in type(config.task).resumable}
        bad = {k: v for k, v in changed.items() if k not in allowed}
        if bad:
            details = ", ".join(f"{k}={v!r} (the run has {flat[k]!r})" for k, v in bad.items())
            raise CheckpointError(
                f"cannot resume {run} with {details}: only {', '.join(sorted(allowed))} "
                "may change on resume; start a new run for other changes"
            )
        changed["run.out"] = str(run)
        config = config.replace(**changed)
        task = load_task(
            config.task, progress=config.run.progress, state=meta.get("task_state") or {}
        )
        trainer = cls(config, task=task, log=log, on_epoch=on_epoch, _resuming=True)
        trainer._restore()
        return trainer

    def _restore(self) -> None:
        """Load ``checkpoints/last`` into this trainer (reading only; :meth:`fit` takes the
        run's lock before it writes anything)."""
        run = self.run_dir
        meta = load_checkpoint(
            run / "checkpoints" / "last",
            model=_resume_state(self.model, self.averaged),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            restore_rng=True,
            restore_progress=self.task.restore_progress,
        )
        state = validate_trainer_meta(meta, f"{run}/checkpoints/last/meta.json")
        self.epoch = state["epoch"]
        self.best_valid = state["best_valid"]
        self.best_tie = _float_of(state, "best_tie", self.best_tie)
        self.best_epoch = state["best_epoch"]
        self.since_best = state["since_best"]
        self.updates = _updates_of(meta, self.epoch)
        self.history = rundir.read_metrics(run, epochs=self.epoch)
        self.log(
            f"resuming {run} after epoch {self.epoch} (best valid {self.task.monitor} "
            f"{self.best_valid:.4f} at epoch {self.best_epoch})"
        )

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, split: str) -> dict[str, Any]:
        """The task's metrics on ``split`` (see :func:`evaluate`), of the evaluated weights
        (data-parallel: each rank evaluates its shard and the statistics are added)."""
        return evaluate(
            self.task, self.averaged, split, place=self.dist if self.dist.active else None
        )

    # ------------------------------------------------------------------ training

    def _epoch_generator(self, epoch: int) -> torch.Generator:
        # the data order of an epoch depends on (seed, epoch) only, so a resumed run replays it
        return torch.Generator().manual_seed(self.config.run.seed * 1_000_003 + epoch)

    def _average(self) -> None:
        """Move the weight average towards the trained weights; the decay warms up as
        ``min(ema, (1 + t) / (10 + t))`` after ``t`` updates, so a short run's average is not
        stuck near the initial weights."""
        decay = min(self.config.optim.ema, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for avg, p in zip(self.averaged.parameters(), self.model.parameters(), strict=True):
                avg.lerp_(p, 1 - decay)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        c = self.config.optim
        self.model.train()
        total, count, items = 0.0, 0, 0
        start = time.perf_counter()
        unit = self.task.unit
        bar = _Progress(
            self.config.run.progress and self.dist.main,
            self.task.size("train") or None,
            f"epoch {epoch}/{c.epochs}",
            unit,
        )
        self.task.start_epoch(epoch)
        world = self.dist.world
        if self.dist.active:  # dropout and weight noise: each rank its own draws
            torch.manual_seed((self.config.run.seed * 1_000_003 + epoch) * 4099 + self.dist.rank)
        try:
            batches = self.task.batches(
                "train",
                self.local_batch_size,
                shuffle=True,
                generator=self._epoch_generator(epoch),
            )
            for step, (batch, weight) in enumerate(self.dist.train_batches(iter(batches)), 1):
                batch = _cast_batch(batch, self.dtype)
                clean = self._add_weight_noise()
                loss_sum, n = self.task.loss(self.train_model, batch)
                if world > 1:  # DDP averages over ranks: scale to the global sum / count
                    (global_n,) = self.dist.sum(n * weight)
                    loss = loss_sum * (weight * world / global_n)
                else:
                    loss = loss_sum / n
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the training loss became {loss.item()} at epoch {epoch}, step {step}; "
                        "try a lower --lr or a --clip-grad-norm"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.dist.guard("the gradient all-reduce", loss.backward)
                if clean is not None:  # the gradient at the noisy weights moves the clean ones
                    with torch.no_grad():
                        for p, w in zip(self.model.parameters(), clean, strict=True):
                            p.copy_(w)
                if c.clip_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad_norm)
                self.optimizer.step()
                if c.ema > 0:
                    self._average()
                self.updates += 1
                total += loss_sum.item() * weight
                count += n * weight
                items += batch.items * weight
                rate = items / (time.perf_counter() - start)
                bar.update(batch.items, loss=f"{total / count:.3f}", **{f"{unit}_s": f"{rate:.0f}"})
        finally:
            bar.close()
        if world > 1:
            total, count, items = self.dist.sum(total, count, items)
        if count == 0:
            raise DataError("the train split produced no batches")
        seconds = time.perf_counter() - start
        return {"train_loss": total / count, "seconds": seconds, f"{unit}_per_s": items / seconds}

    def _add_weight_noise(self) -> list[torch.Tensor] | None:
        """Perturb the weights for one mini-batch; return the clean weights to restore."""
        std = self.config.optim.weight_noise
        if std <= 0:
            return None
        params = list(self.model.parameters())
        with torch.no_grad():
            clean = [p.detach().clone() for p in params]
            for p in params:
                p.add_(torch.randn_like(p), alpha=std)
        return clean

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or early stopping; return the best checkpoint's metrics.
        Data-parallel, rank 0 alone holds the run's lock and writes the folder."""
        if not self.dist.main:
            self.dist.run_on_main(lambda: None)  # rank 0 claims the folder
            return self._fit()
        with rundir.RunLock(self.run_dir, create=not self._resuming):

            def claim() -> None:
                rundir.claim(self.run_dir, resume=self._resuming)
                if self._resuming:  # drop a line cut short by a kill, and later epochs
                    rundir.restore_metrics(self.run_dir, epochs=self.epoch)

            self.dist.run_on_main(claim)
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        c = self.config
        monitor = self.task.monitor
        main = self.dist.main
        if main:
            c.save_toml(self.run_dir / "config.toml")
        if self.epoch == 0:
            self.log(
                f"training {c.model.variant} ({_count_parameters(self.model)} parameters, "
                f"{c.model.num_layers}x{c.model.hidden_size}"
                f"{', bidirectional' if c.model.bidirectional else ''}) on "
                f"{self.task.describe()}; run folder {self.run_dir}"
            )
        stopped = "epochs"
        # wall-clock seconds of training and validation since the run began (over resumes)
        clock = time.perf_counter() - (
            self.history[-1].get("elapsed_s", 0.0) if self.history else 0.0
        )
        while True:
            if c.optim.patience and self.since_best >= c.optim.patience:
                stopped = "early stopping"
                break
            if self.epoch >= c.optim.epochs:
                break
            if (
                c.optim.max_minutes
                and self.history
                and (self.history[-1].get("elapsed_s", 0.0) >= 60 * c.optim.max_minutes)
            ):
                stopped = "time budget"
                break
            epoch = self.epoch + 1
            row: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self.train_epoch(epoch))
            metrics = self.evaluate("valid")
            row["valid_" + monitor] = valid = metrics[monitor]
            tiebreak = self.task.tiebreak
            if tiebreak:
                row["valid_" + tiebreak] = metrics[tiebreak]
            if not math.isfinite(valid):
                raise TrainingError(f"the validation {monitor} became {valid} at epoch {epoch}")
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(valid)
            elif self.scheduler is not None:
                self.scheduler.step()
            improved = self.task.improves(metrics, self.best_valid, self.best_tie)
            if improved:
                self.best_valid, self.best_epoch, self.since_best = valid, epoch, 0
                self.best_tie = metrics[tiebreak] if tiebreak else 0.0
            else:
                self.since_best += 1
            self.epoch = epoch
            # rank 0's clock and timings, so every rank takes the same time-budget decision
            row["elapsed_s"] = time.perf_counter() - clock
            if self.dist.active:
                row.update(self.dist.from_main({k: row[k] for k in _TIMING_KEYS if k in row}))
            self.history.append(row)
            if main:
                if improved:
                    self._save("best")
                rundir.append_metrics(self.run_dir, row)
                self._save("last")
            self.log(
                f"epoch {epoch:3d}  train loss {row['train_loss']:.4f}  valid {monitor} "
                f"{valid:.4f}{'  *' if improved else ''}  {row['seconds']:.2f}s "
                f"({row[f'{self.task.unit}_per_s']:.0f} {self.task.unit}/s)"
            )
            if self.on_epoch is not None and main:
                self.on_epoch(row)
        return self._finish(stopped)

    def _finish(self, stopped: str) -> dict[str, Any]:
        if self.dist.main:
            load_checkpoint(self.run_dir / "checkpoints" / "best", model=self.averaged)
        self.dist.broadcast_module(self.averaged)
        c = self.config
        result: dict[str, Any] = {
            "run": str(self.run_dir),
            "task": c.task.name,
            "data": c.task.data,
            "variant": c.model.variant,
            "hidden_size": c.model.hidden_size,
            "parameters": _count_parameters(self.averaged),
            "seed": c.run.seed,
            "monitor": self.task.monitor,
            "mode": self.task.modes[self.task.monitor],
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "stopped_by": stopped,
            "seconds_per_epoch": (
                sum(h["seconds"] for h in self.history) / len(self.history) if self.history else 0.0
            ),
        }
        for split in ("train", "valid", "test"):
            if self.task.size(split) or split == "train":  # a task may have no test split
                result[split] = self.evaluate(split)
        if not self.dist.main:
            return result
        reports: dict[str, str] = {}
        try:
            from grukit.plots import plot_curves

            plot_curves(
                self.history, self.run_dir / "curves.png", metric=self.task.monitor,
                mode=self.task.modes[self.task.monitor], best_epoch=self.best_epoch,
            )  # fmt: skip
            reports["curves"] = str(self.run_dir / "curves.png")
        except Exception as exc:  # a plot must never cost a finished run
            self.log(f"(could not draw the curves: {exc})")
        try:
            reports.update(self.task.report(self.averaged, self.run_dir, result, log=self.log))
        except (OSError, ValueError, RuntimeError) as exc:
            self.log(f"(could not write the task's reports: {exc})")
        result["reports"] = reports
        atomic_write_json(self.run_dir / "final.json", result)
        return result

    # ------------------------------------------------------------------ run folder

    def _save(self, which: str) -> None:
        meta = {
            "config": self.config.to_dict(),
            "task_state": self.task.state(),
            "epoch": self.epoch,
            "metrics": self.history[-1] if self.history else {},
            "trainer": {
                "epoch": self.epoch,
                "best_valid": self.best_valid,
                "best_tie": self.best_tie,
                "best_epoch": self.best_epoch,
                "since_best": self.since_best,
                "updates": self.updates,
            },
        }
        save_checkpoint(
            self.run_dir / "checkpoints" / which,
            model=_resume_state(self.model, self.averaged) if which == "last" else self.averaged,
            optimizer=self.optimizer if which == "last" else None,
            scheduler=self.scheduler if which == "last" else None,
            meta=meta,
            rng=which == "last",
            progress=self.task.progress() if which == "last" else None,
        )


_TIMING_KEYS = ("seconds", "elapsed_s")


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def _cast_value(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, PackedSequence):
        if value.data.is_floating_point():
            return value._replace(data=value.data.to(dtype))
        return value
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _cast_batch(batch: Any, dtype: torch.dtype) -> Any:
    """``batch`` (a task's dataclass) with its floating tensors in ``dtype`` (``run.dtype``)."""
    if dtype == torch.float32 or not dataclasses.is_dataclass(batch):
        return batch
    fields = dataclasses.fields(batch)
    changes = {f.name: _cast_value(getattr(batch, f.name), dtype) for f in fields}
    return dataclasses.replace(batch, **changes)


def _float_of(state: Mapping[str, Any], key: str, default: float) -> float:
    value = state.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise CheckpointError(f"meta.json: trainer.{key} must be a number, got {value!r}")
    return float(value)


def _updates_of(meta: Mapping[str, Any], epoch: int) -> int:
    value = meta["trainer"].get("updates", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"meta.json: trainer.updates must be an integer >= 0, got {value!r}")
    return value


def _resume_state(model: nn.Module, averaged: nn.Module) -> nn.Module:
    """What ``checkpoints/last`` holds of the weights: the trained model and, when the run keeps
    an average of its weights (``ema``), that average too; ``best`` holds the evaluated weights."""
    if averaged is model:
        return model
    return nn.ModuleDict({"model": model, "averaged": averaged})


@torch.no_grad()
def evaluate(
    task: Task,
    model: nn.Module,
    split: str,
    batch_size: int = 64,
    *,
    place: Distributed | None = None,
) -> dict[str, Any]:
    """The task's metrics on ``split`` (for music: NLL per predicted frame), in eval mode, with
    the batches in the model's floating dtype. With ``place`` (a data-parallel run) each rank
    evaluates its shard of the batches and the task's statistics of all ranks are added."""
    model.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    batches: Any = (_cast_batch(b, dtype) for b in task.batches(split, batch_size))
    if place is not None:
        batches = place.eval_batches(batches)
    sums: dict[str, Any] = {}
    for batch in batches:
        add_sums(sums, task.eval_sums(model, batch))
    if place is not None:
        sums = place.add_sums(sums)
    if not sums:
        raise DataError(f"the {split} split is empty")
    return task.metrics(sums, split)


def _config_of(meta: Mapping[str, Any], source: str) -> RunConfig:
    if "config" not in meta:
        raise CheckpointError(f"{source} holds no config")
    return run_config_from_dict(meta["config"], source=source)


def load_run(
    run_dir: str | os.PathLike[str],
    *,
    which: str = "best",
    data: str | None = None,
    device: str | None = None,
) -> tuple[RunConfig, Task, nn.Module]:
    """``(config, task, model)`` of a finished or running run, weights from ``which``; the
    config and the task's state come from that checkpoint, so ``best`` works without ``last``."""
    run = Path(run_dir)
    rundir.check_readable(run)
    path = run / "checkpoints" / which
    meta = read_meta(path)
    config = _config_of(meta, f"{path}/meta.json")
    changes: dict[str, Any] = {}
    if data is not None:
        changes["task.data"] = data
    if device is not None:
        changes["run.device"] = device
    if changes:
        config = config.replace(**changes)
    task = load_task(config.task, progress=False, state=meta.get("task_state") or {})
    model = build_model(config, task)
    model.to(resolve_device(config.run.device), config.run.torch_dtype)
    if which == "last" and config.optim.ema > 0:  # last holds the trained and averaged weights
        averaged = copy.deepcopy(model)
        load_checkpoint(path, model=_resume_state(model, averaged))
        model = averaged
    else:
        load_checkpoint(path, model=model)
    model.eval()
    return config, task, model


def config_from_args(
    toml_path: str | None, overrides: Mapping[str, Any], announce: Callable = print
) -> RunConfig:
    """The config of a new run: defaults, then a TOML file (or packaged config), then flags."""
    path = resolve_config_path(toml_path) if toml_path else None
    return build_run_config(toml_path=path, overrides=overrides, announce=announce)
