"""Chung et al. 2014 on polyphonic music, reproduced: tanh-RNN, LSTM and GRU of ~20K parameters.

Chung et al. (arXiv 1412.3555, sec. 4.1, Table 1) trained a tanh-RNN of 100 units, an LSTM of 36
and a GRU of 46 (about 20K parameters each) with the same optimiser and budget, and reported the
average negative log-likelihood per time step (Table 2). :func:`compare` trains the same three,
plus any grukit variants (sized to the GRU's parameter count), with one shared training
configuration, and puts the paper's numbers beside ours.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grukit.errors import ConfigError
from grukit.rnn import count_parameters
from grukit.tasks import load_task
from grukit.train import TrainConfig, Trainer
from grukit.variants import ALL_VARIANTS

__all__ = ["CHUNG_MODELS", "PAPER_TABLE2", "compare", "format_table", "matched_hidden_size"]

#: Chung et al. 2014, Table 1 (music): (variant, units).
CHUNG_MODELS: tuple[tuple[str, int], ...] = (("rnn_tanh", 100), ("lstm", 36), ("gru", 46))

#: Chung et al. 2014, Table 2: average NLL per time step, (train, test), per data set and model.
#: Only the JSB row has been checked against a source here (a public reproduction quoting the
#: paper); the other rows are transcribed and await a check against the paper's PDF, which
#: :func:`format_table` and the JSON (``paper_checked``) say.
PAPER_TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "nottingham": {"rnn_tanh": (3.22, 3.13), "gru": (2.79, 3.23), "lstm": (3.08, 3.20)},
    "jsb": {"rnn_tanh": (8.82, 9.19), "gru": (6.94, 8.54), "lstm": (8.15, 8.67)},
    "musedata": {"rnn_tanh": (5.64, 6.23), "gru": (5.06, 5.99), "lstm": (5.18, 6.23)},
    "piano-midi": {"rnn_tanh": (5.64, 9.03), "gru": (4.93, 8.82), "lstm": (6.49, 9.03)},
}

#: Data sets whose Table 2 row has been checked against a source.
PAPER_CHECKED = frozenset({"jsb"})

_MUSIC_KEYS = 88


def _model_parameters(variant: str, hidden: int, num_layers: int = 1) -> int:
    """Recurrent stack plus the 88-way linear read-out."""
    head = hidden * _MUSIC_KEYS + _MUSIC_KEYS
    return count_parameters(variant, _MUSIC_KEYS, hidden, num_layers) + head


def matched_hidden_size(variant: str, target: int) -> int:
    """The units that bring ``variant``'s music model closest to ``target`` parameters."""
    return min(range(1, 513), key=lambda h: (abs(_model_parameters(variant, h) - target), h))


def identify_dataset(data: str) -> str | None:
    """The benchmark a ``--data`` value is (by name, or a local file's sha256), else None."""
    from grukit.data.download import REGISTRY, sha256_file
    from grukit.tasks.music import normalise_name

    name = normalise_name(data) if not os.path.exists(data) else None
    if name in PAPER_TABLE2:
        return name
    if os.path.isfile(data):
        digest = sha256_file(data)
        known = {e.sha256: e.name for e in REGISTRY.values()}
        known["69dc4c3e52800959ac0ab3b82aa3e5f55285ce64f1705acb3e3a8ef77a5c051c"] = "jsb"  # pickle
        return known.get(digest)
    return None


def compare(
    base: TrainConfig,
    *,
    variants: Sequence[str] = (),
    lrs: Sequence[float] = (),
    out: str | os.PathLike[str] = "runs/compare",
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Train Chung et al.'s three models plus ``variants`` with ``base``'s settings.

    Each model is trained once per learning rate in ``lrs`` (``base.lr`` if empty) and the run
    with the best validation NLL is kept, as Chung et al. chose each model's learning rate.
    Returns ``{"data": ..., "paper": name or None, "models": [row, ...]}``; each row has
    ``model``, ``variant``, ``hidden_size``, ``parameters``, ``lr``, ``train_nll``,
    ``valid_nll``, ``test_nll``, ``seconds_per_epoch``, ``best_epoch`` and the paper's
    ``paper_train_nll`` / ``paper_test_nll`` where Table 2 has them.
    """
    bad = [v for v in variants if v not in ALL_VARIANTS]
    if bad:
        raise ConfigError(f"unknown variant(s) {bad}; valid: {', '.join(ALL_VARIANTS)}")
    if any(not lr > 0 for lr in lrs):
        raise ConfigError(f"learning rates must be positive, got {list(lrs)}")
    task = load_task(base.task, base.data, progress=base.progress)
    paper_name = identify_dataset(base.data)
    paper = PAPER_TABLE2.get(paper_name or "", {})
    gru_params = _model_parameters("gru", 46)
    models: list[tuple[str, int]] = list(CHUNG_MODELS)
    for v in variants:
        if all(v != m for m, _ in models):
            models.append((v, matched_hidden_size(v, gru_params)))
    rows = []
    for variant, hidden in models:
        tried = []
        for lr in lrs or (base.lr,):
            cfg = dataclasses.replace(
                base, variant=variant, hidden_size=hidden, num_layers=1, lr=lr,
                out=str(Path(out) / f"{variant}-{hidden}-lr{lr:g}"),
            )  # fmt: skip
            log(f"== {variant} with {hidden} units, learning rate {lr:g} ==")
            tried.append((Trainer(cfg, task=task, log=log).fit(), lr))
        result, lr = min(tried, key=lambda rl: rl[0]["valid"]["nll"])
        row = {
            "model": f"{variant}-{hidden}",
            "variant": variant,
            "hidden_size": hidden,
            "parameters": result["parameters"],
            "lr": lr,
            "train_nll": result["train"]["nll"],
            "valid_nll": result["valid"]["nll"],
            "test_nll": result["test"]["nll"],
            "seconds_per_epoch": result["seconds_per_epoch"],
            "best_epoch": result["best_epoch"],
            "epochs": result["epochs"],
            "run": result["run"],
        }
        if variant in paper:
            row["paper_train_nll"], row["paper_test_nll"] = paper[variant]
        rows.append(row)
    return {
        "data": base.data,
        "paper": paper_name,
        "paper_checked": paper_name in PAPER_CHECKED,
        "models": rows,
    }


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table of ``compare``'s result, with Chung et al.'s Table 2 beside ours."""
    paper = report.get("paper")
    head = "| model | parameters | lr | train NLL | valid NLL | test NLL | s/epoch | best epoch |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if paper:
        head += " paper train | paper test |"
        rule += "---:|---:|"
    lines = [
        f"data: {report['data']}" + (f" (Chung et al. 2014, Table 2: {paper})" if paper else ""),
        "",
        head,
        rule,
    ]
    for r in report["models"]:
        line = (
            f"| {r['model']} | {r['parameters']} | {r['lr']:g} | {r['train_nll']:.2f} | "
            f"{r['valid_nll']:.2f} | "
            f"{r['test_nll']:.2f} | {r['seconds_per_epoch']:.2f} | {r['best_epoch']} |"
        )
        if paper:
            pt, ps = r.get("paper_train_nll"), r.get("paper_test_nll")
            line += f" {pt:.2f} | {ps:.2f} |" if pt is not None else " | |"
        lines.append(line)
    if paper and not report.get("paper_checked", False):
        lines += ["", f"(the paper's {paper} numbers are transcribed and not yet checked)"]
    return "\n".join(lines)
