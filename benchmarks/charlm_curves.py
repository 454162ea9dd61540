"""Validation loss against wall-clock time for character-LM runs, in one figure and a table.

    python benchmarks/charlm_curves.py RUN [RUN ...] --out docs/shakespeare_char.png

Each RUN is a run folder of ``grukit train --task charlm``; its ``metrics.jsonl`` gives the
validation nats per character after every epoch and ``elapsed_s`` (training and validation
seconds since the run began). The figure marks the published numbers the README compares with
(nanoGPT's shakespeare_char README: 1.4697 for its GPU configuration, about 1.88 for its
3-minute CPU configuration; 1.548 for minGRU as the issue quotes Feng et al. 2024). The table
gives, per run, the best validation value, when it was reached, and the first time each
threshold was crossed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REFERENCES = (
    (1.4697, "nanoGPT shakespeare_char, GPU config (10.7M parameters)"),
    (1.548, "minGRU (Feng et al. 2024, as quoted in the issue)"),
    (1.88, "nanoGPT CPU config, about 3 minutes"),
)
THRESHOLDS = (1.88, 1.55)


def read_run(run: Path) -> dict[str, Any]:
    """Label, parameter count and the ``(minutes, valid nats/char)`` curve of a run folder."""
    config = json.loads((run / "checkpoints" / "best" / "meta.json").read_text())["config"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    model = config["model"]
    label = f"{model['variant']} {model['num_layers']}x{model['hidden_size']}"
    final = run / "final.json"
    params = json.loads(final.read_text())["parameters"] if final.is_file() else None
    curve = [(r["elapsed_s"] / 60, r["valid_nats_per_char"]) for r in rows if "elapsed_s" in r]
    # characters trained: each epoch reads steps_per_epoch chunks of bptt steps in batch streams
    task, optim = config["task"], config["optim"]
    per_epoch = task["steps_per_epoch"] * task["bptt"] * optim["batch_size"]
    chars = [(r["epoch"] * per_epoch / 1e6, r["valid_nats_per_char"]) for r in rows]
    return {"run": str(run), "label": label, "parameters": params, "curve": curve,
            "chars": chars}  # fmt: skip


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Best value, its time, and the first time under each threshold (None: never)."""
    curve = run["curve"]
    best_t, best = min(curve, key=lambda p: p[1])
    first = {f"under_{t}": next((m for m, v in curve if v < t), None) for t in THRESHOLDS}
    return {"label": run["label"], "parameters": run["parameters"], "best": best,
            "best_at_min": best_t, "minutes": curve[-1][0], **first}  # fmt: skip


def windowed_valid(run: Path, context: int) -> float:
    """Valid nats/char of ``run``'s best checkpoint, the state reset every ``context`` chars."""
    from grukit.train import evaluate, load_run

    _, task, model = load_run(run)
    task.config.eval_context = context
    return evaluate(task, model, "valid")["nats_per_char"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="PNG of the curves")
    parser.add_argument(
        "--context", type=int, default=0,
        help="also score each run's best checkpoint on valid with the state reset every N "
        "characters (nanoGPT's scoring: N = 256)",
    )  # fmt: skip
    args = parser.parse_args()
    runs = [read_run(r) for r in args.runs]
    rows = [summarise(r) for r in runs]
    if args.context:
        for path, row in zip(args.runs, rows, strict=True):
            row["windowed"] = windowed_valid(path, args.context)
            print(
                f"{row['label']}: valid nats/char {row['best']:.4f} with the state carried, "
                f"{row['windowed']:.4f} with it reset every {args.context} characters"
            )

    def minutes(v: float | None) -> str:
        return "never" if v is None else f"{v:.1f}"

    print("| model | parameters | best valid nats/char | at minute | under 1.88 at | "
          "under 1.55 at | minutes run |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['label']} | {r['parameters']} | {r['best']:.4f} | {r['best_at_min']:.1f} | "
            f"{minutes(r['under_1.88'])} | {minutes(r['under_1.55'])} | {r['minutes']:.1f} |"
        )
    if args.out is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, key, xlabel in (
        (axes[0], "curve", "wall-clock minutes (training + validation)"),
        (axes[1], "chars", "millions of characters trained"),
    ):
        for run in runs:
            if not run[key]:
                continue
            xs, ys = zip(*run[key], strict=True)
            ax.plot(xs, ys, marker=".", label=f"{run['label']} ({run['parameters']:,} parameters)")
        for value, text in REFERENCES:
            ax.axhline(value, color="grey", linestyle=":", linewidth=1)
            if ax is axes[1]:
                ax.text(ax.get_xlim()[1], value, f" {text}", va="center", fontsize=7, color="grey")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation nats per character")
    axes[0].set_ylim(1.35, 2.2)
    axes[0].legend(fontsize=8)
    from grukit.bench import machine_line

    fig.suptitle(f"Tiny Shakespeare, nanoGPT's split; {machine_line()}", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
