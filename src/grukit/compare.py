"""``grukit compare``: several variants on one task at a matched parameter count, over seeds.

Each model is trained with one shared configuration, once per learning rate in ``lrs`` and per
seed; for each model the learning rate with the best mean validation value of the task's
watched metric is kept (as Chung et al. chose each model's rate), and the mean and standard
deviation over seeds of every split's value are reported with the time per epoch and the
parameter count. A model given without units is sized to the reference model's parameter count
(the task's ``gru`` if it lists one, else the first model), counting the task's head too.

On the music task with no ``--variants`` this is Chung et al. 2014 (the task's
``compare_models``, packaged config ``chung2014``), printed beside the paper's Table 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from grukit.checkpoint import read_meta
from grukit.errors import ConfigError
from grukit.runconfig import RESUMABLE_KEYS, RunConfig, run_config_from_dict
from grukit.tasks import get_task, load_task
from grukit.tasks.base import Task
from grukit.variants import ALL_VARIANTS

__all__ = ["compare", "format_table", "matched_hidden_size", "model_parameters", "parse_models"]


def parse_models(text: str) -> list[tuple[str, int | None]]:
    """``"gru,mgu:40,lstm"`` -> ``[("gru", None), ("mgu", 40), ("lstm", None)]``."""
    models: list[tuple[str, int | None]] = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        variant, _, units = item.partition(":")
        if variant not in ALL_VARIANTS:
            raise ConfigError(f"unknown variant {variant!r}; valid: {', '.join(ALL_VARIANTS)}")
        try:
            size = int(units) if units else None
        except ValueError:
            raise ConfigError(f"--variants: units must be an integer, got {item!r}") from None
        if size is not None and size <= 0:
            raise ConfigError(f"--variants: units must be positive, got {item!r}")
        models.append((variant, size))
    return models


def model_parameters(task: Task, model: Any, cell: Any = None) -> int:
    """Parameters of ``task``'s whole model for ModelConfig ``model`` and CellConfig ``cell``
    (layer-norm gains count; built on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        net = task.build_model(model, cell)
    return sum(p.numel() for p in net.parameters())


def matched_hidden_size(task: Task, model: Any, variant: str, target: int, cell: Any = None) -> int:
    """The units that bring ``variant``'s model for ``task`` (with the in-cell options of
    ``cell``) closest to ``target`` parameters."""

    def size(h: int) -> int:
        return model_parameters(
            task, dataclasses.replace(model, variant=variant, hidden_size=h), cell
        )

    lo, hi = 1, 8192
    while lo < hi:  # the count grows with the units: the first h whose count reaches target
        mid = (lo + hi) // 2
        if size(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    return min({max(1, lo - 1), lo}, key=lambda h: (abs(size(h) - target), h))


def _base_config(config: str | None, overrides: Mapping[str, Any]) -> RunConfig:
    from grukit.train import config_from_args

    quiet = lambda s: None  # noqa: E731
    base = config_from_args(config, overrides, announce=quiet)
    if config is None and get_task(base.task.name).compare_config:
        base = config_from_args(get_task(base.task.name).compare_config, overrides, announce=quiet)
    return base


def compare(
    *,
    config: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    models: Sequence[tuple[str, int | None]] | None = None,
    lrs: Sequence[float] | None = None,
    only: Sequence[str] | None = None,
    seeds: int = 1,
    out: str | os.PathLike[str] = "runs/compare",
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Train the task's comparison models plus ``models``; see the module docstring.

    ``only`` (variant names) trains just those of the list, sized as in the whole comparison,
    so that one comparison can run as several processes.

    Returns ``{"task", "data", "monitor", "mode", "paper", "paper_checked", "models": [row]}``;
    each row has ``model``, ``variant``, ``hidden_size``, ``parameters``, ``lr``, ``seeds``,
    ``{split}_{monitor}`` (mean) and ``{split}_{monitor}_std`` for each split,
    ``seconds_per_epoch``, ``best_epoch``, ``runs`` and ``paper_{split}_{monitor}`` where the
    task has published numbers.
    """
    from grukit.train import Trainer
    from grukit.tune import train_and_score  # the one "train a config, keep its metric"

    base = _base_config(config, overrides or {})
    lrs = list(get_task(base.task.name).compare_lrs if lrs is None else lrs)
    if any(not lr > 0 for lr in lrs):
        raise ConfigError(f"learning rates must be positive, got {lrs}")
    task = load_task(base.task, progress=base.run.progress)
    wanted: list[tuple[str, int | None]] = list(task.compare_models)
    for variant, units in models or ():  # VARIANT:UNITS resizes a model of the task's list
        known = [i for i, (v, _) in enumerate(wanted) if v == variant]
        if not known:
            wanted.append((variant, units))
        elif units is not None:
            wanted[known[0]] = (variant, units)
    if not wanted:
        raise ConfigError(f"task {task.name!r} has no default models: pass --variants")
    if only:  # one comparison split over processes: each trains some models, sized as in all
        listed = [v for v, _ in wanted]
        unknown = [v for v in only if v not in listed]
        if unknown:
            raise ConfigError(
                f"--only {','.join(unknown)}: not in this comparison (its models: "
                f"{', '.join(listed)})"
            )
    for variant, _ in wanted:  # [cell] options a variant cannot run: refused before training
        base.replace(**{"model.variant": variant})
    reference = next(((v, u) for v, u in wanted if v == "gru"), wanted[0])
    ref_units = reference[1] or base.model.hidden_size
    target = model_parameters(
        task,
        dataclasses.replace(base.model, variant=reference[0], hidden_size=ref_units),
        base.cell,
    )
    monitor = task.monitor
    paper = task.paper_results()
    rows = []
    for variant, units in wanted:
        if only and variant not in only:
            continue
        hidden = units or matched_hidden_size(task, base.model, variant, target, base.cell)
        by_lr: dict[float, list[dict[str, Any]]] = {}
        for lr in lrs or (base.optim.lr,):
            for seed in range(base.run.seed, base.run.seed + seeds):
                name = f"{variant}-{hidden}-lr{lr:g}" + (f"-seed{seed}" if seeds > 1 else "")
                cfg = base.replace(**{
                    "model.variant": variant, "model.hidden_size": hidden, "optim.lr": lr,
                    "run.seed": seed, "run.out": str(Path(out) / name),
                })  # fmt: skip
                log(f"== {variant} with {hidden} units, learning rate {lr:g}, seed {seed} ==")
                result = _finished_result(cfg)
                last = Path(cfg.run.out) / "checkpoints" / "last" / "meta.json"
                if result is None and last.is_file():  # a compare killed mid-run goes on
                    result = Trainer.resume(cfg.run.out, log=log).fit()
                elif result is None:
                    _, result = train_and_score(cfg, task=task, log=log)
                by_lr.setdefault(lr, []).append(result)
        pick = max if task.modes[monitor] == "max" else min
        lr = pick(by_lr, key=lambda k: statistics.fmean(r["valid"][monitor] for r in by_lr[k]))
        results = by_lr[lr]
        row: dict[str, Any] = {
            "model": f"{variant}-{hidden}",
            "variant": variant,
            "hidden_size": hidden,
            "parameters": results[0]["parameters"],
            "lr": lr,
            "seeds": len(results),
        }
        for split in ("train", "valid", "test"):
            if any(split not in r for r in results):  # a task without a test split
                continue
            values = [r[split][monitor] for r in results]
            row[f"{split}_{monitor}"] = statistics.fmean(values)
            row[f"{split}_{monitor}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["seconds_per_epoch"] = statistics.fmean(r["seconds_per_epoch"] for r in results)
        row["best_epoch"] = results[0]["best_epoch"] if len(results) == 1 else statistics.fmean(
            r["best_epoch"] for r in results
        )  # fmt: skip
        row["epochs"] = results[0]["epochs"]
        row["runs"] = [r["run"] for r in results]
        row["run"] = results[0]["run"]
        if paper and variant in paper["rows"]:
            for split, value in paper["rows"][variant].items():
                row[f"paper_{split}_{monitor}"] = value
        rows.append(row)
    return {
        "task": task.name,
        "data": base.task.data,
        "monitor": monitor,
        "mode": task.modes[monitor],
        "paper": paper["name"] if paper else None,
        "paper_source": paper["source"] if paper else None,
        "paper_checked": bool(paper and paper["checked"]),
        "models": rows,
    }


def _finished_result(config: RunConfig) -> dict[str, Any] | None:
    """The result of ``config``'s run if its folder holds that run finished (``final.json``),
    so that a compare run again after a kill keeps what it trained; ``None`` if it has not
    finished. A folder that holds another configuration is refused."""
    run = Path(config.run.out)
    final, last = run / "final.json", run / "checkpoints" / "last"
    if not (final.is_file() and (last / "meta.json").is_file()):
        return None
    saved = run_config_from_dict(read_meta(last)["config"], source=f"{last}/meta.json").flat()
    wanted = config.flat()
    differ = sorted(k for k in wanted if k not in RESUMABLE_KEYS and saved.get(k) != wanted[k])
    if differ:
        raise ConfigError(
            f"{run} holds a finished run with other settings ({', '.join(differ)}); pass "
            "another --out to compare afresh"
        )
    return json.loads(final.read_text())


def format_table(report: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`compare`'s result, published numbers beside ours."""
    m = report["monitor"]
    paper = report.get("paper")
    paper_splits = sorted(
        {k.split("_")[1] for r in report["models"] for k in r if k.startswith("paper_")},
        key=("train", "valid", "test").index,
    )
    seeds = max(r["seeds"] for r in report["models"])

    def cell(r: Mapping[str, Any], s: str) -> str:
        if f"{s}_{m}" not in r:  # a task without that split (the char-LM's test part)
            return "-"
        mean = f"{r[f'{s}_{m}']:.4g}"
        return f"{mean} ± {r[f'{s}_{m}_std']:.2g}" if seeds > 1 else mean

    head = f"| model | parameters | lr | train {m} | valid {m} | test {m} | s/epoch | best epoch |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    for s in paper_splits:
        head += f" paper {s} |"
        rule += "---:|"
    title = f"task: {report['task']}, data: {report['data']}"
    if paper:
        title += f" ({report.get('paper_source')}: {paper})"
    if seeds > 1:
        title += f"; mean ± std over {seeds} seeds"
    lines = [title, "", head, rule]
    for r in report["models"]:
        line = (
            f"| {r['model']} | {r['parameters']} | {r['lr']:g} | {cell(r, 'train')} | "
            f"{cell(r, 'valid')} | {cell(r, 'test')} | {r['seconds_per_epoch']:.2f} | "
            f"{r['best_epoch']:.4g} |"
        )
        for s in paper_splits:
            value = r.get(f"paper_{s}_{m}")
            line += f" {value:.2f} |" if value is not None else " |"
        lines.append(line)
    if paper and not report.get("paper_checked", False):
        lines += ["", f"(the paper's {paper} numbers are transcribed and not yet checked)"]
    return "\n".join(lines)
