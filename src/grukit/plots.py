"""Figures of a run: training curves (PNG, matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_curves"]


def plot_curves(
    history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, metric: str = "nll"
) -> None:
    """Train loss and validation ``metric`` per epoch, written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grukit.checkpoint import atomic_write_bytes

    epochs = [h["epoch"] for h in history]
    train = [h["train_loss"] for h in history]
    valid = [h[f"valid_{metric}"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(epochs, train, label=f"train {metric} (with dropout / weight noise)")
    ax.plot(epochs, valid, label=f"valid {metric}")
    if history:
        best = min(history, key=lambda h: h[f"valid_{metric}"])
        ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best epoch {best['epoch']}")
        # the first epochs' losses are far above the rest: show where the run converges
        later = (
            (train + valid)
            if len(history) < 5
            else train[len(train) // 10 :] + valid[len(valid) // 10 :]
        )
        low, high = min(train + valid), max(later)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low) + 1e-9)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} per frame")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from io import BytesIO

    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
