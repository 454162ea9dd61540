"""Figures of a run: training curves (PNG, matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_curves"]


def plot_curves(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    metric: str,
    mode: str = "min",
    best_epoch: int | None = None,
) -> None:
    """Train loss and validation ``metric`` per epoch, written atomically to ``path``.

    When ``metric`` is on the loss's scale (lower is better) both share one axis; a metric where
    higher is better (accuracy) gets its own axis on the right. ``best_epoch`` marks the kept
    checkpoint (default: the epoch of the best validation value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grukit.io import atomic_write_bytes

    epochs = [h["epoch"] for h in history]
    train = [h["train_loss"] for h in history]
    valid = [h[f"valid_{metric}"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(epochs, train, label="train loss (with dropout / weight noise)")
    other = ax
    if mode == "max":
        other = ax.twinx()
        other.set_ylabel(f"valid {metric}")
        ax.set_ylabel("train loss")
    else:
        ax.set_ylabel(f"train loss, valid {metric}")
    other.plot(epochs, valid, color="tab:orange", label=f"valid {metric}")
    if history:
        pick = max if mode == "max" else min
        if best_epoch is None:
            best_epoch = pick(history, key=lambda h: h[f"valid_{metric}"])["epoch"]
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        if mode != "max":
            # the first epochs' losses are far above the rest: show where the run converges
            later = (
                (train + valid)
                if len(history) < 5
                else train[len(train) // 10 :] + valid[len(valid) // 10 :]
            )
            low, high = min(train + valid), max(later)
            ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low) + 1e-9)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    if other is not ax:
        extra = other.get_legend_handles_labels()
        handles = (handles[0] + extra[0], handles[1] + extra[1])
    ax.legend(*handles)
    fig.tight_layout()
    from io import BytesIO

    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
