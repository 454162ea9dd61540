"""Figures of a run: training curves (PNG, matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "plot_gates"]


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


def plot_gates(
    path: str | os.PathLike[str],
    panels: Sequence[tuple[str, Any, float, float, str]],
    *,
    view_kind: str,
    view: Any,
    title: str = "",
) -> None:
    """Heatmaps of recorded gates over time under the input they read, written atomically.

    panels: ``(label, values (H, T), vmin, vmax, colormap)``, one heatmap each, units on y
    and steps on x. view: the input in its task's own form, drawn on top over the same steps:
    ``view_kind`` ``"piano_roll"`` (``(T, 88)`` 0/1, MIDI 21-108), ``"features"`` (``(T, C)``
    heatmap), ``"series"`` (``(T, C)`` lines) or ``"characters"`` (``T`` strings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from grukit.io import atomic_write_bytes

    T = len(view)
    heights = [1.6 if view_kind != "characters" else 0.5]
    heights += [max(1.0, min(3.0, 0.045 * np.asarray(p[1]).shape[0])) for p in panels]
    fig, axes = plt.subplots(
        len(heights), 1, sharex=True, height_ratios=heights, squeeze=False,
        figsize=(min(18.0, 5.0 + T / 14), 0.9 + sum(heights)), dpi=90, layout="constrained",
    )  # fmt: skip
    axes = axes[:, 0]
    top = axes[0]
    extent_x = (-0.5, T - 0.5)
    if view_kind == "piano_roll":
        roll = np.asarray(view) > 0
        used = np.flatnonzero(roll.any(axis=0))
        lo, hi = (max(0, used[0] - 2), min(87, used[-1] + 2)) if len(used) else (0, 87)
        top.imshow(roll[:, lo : hi + 1].T, aspect="auto", origin="lower", cmap="Greys",
                   interpolation="nearest", extent=(*extent_x, lo + 20.5, hi + 21.5))  # fmt: skip
        top.set_ylabel("MIDI pitch")
    elif view_kind == "features":
        feats = np.asarray(view, dtype=float)
        top.imshow(feats.T, aspect="auto", origin="lower", cmap="coolwarm",
                   interpolation="nearest",
                   extent=(*extent_x, -0.5, feats.shape[1] - 0.5))  # fmt: skip
        top.set_ylabel("feature")
    elif view_kind == "series":
        series = np.asarray(view, dtype=float).reshape(T, -1)
        top.plot(np.arange(T), series, linewidth=1)
        top.set_ylabel("input (scaled)")
    elif view_kind == "characters":
        top.set_ylim(0, 1)
        top.set_yticks([])
        size = max(4.0, min(9.0, 900 / max(T, 1)))
        for t, ch in enumerate(view):
            shown = {"\n": "\u23ce", " ": "\u00b7", "\t": "\u21e5"}.get(ch, ch)
            top.text(t, 0.5, shown, ha="center", va="center", fontsize=size, family="monospace")
    else:
        raise ValueError(f"plot_gates: unknown view_kind {view_kind!r}")
    top.set_title(title, fontsize=10, loc="left")
    for ax, (label, values, vmin, vmax, cmap) in zip(axes[1:], panels, strict=True):
        values = np.asarray(values, dtype=float)
        image = ax.imshow(values, aspect="auto", origin="upper", cmap=cmap, vmin=vmin,
                          vmax=vmax, interpolation="nearest",
                          extent=(*extent_x, values.shape[0] - 0.5, -0.5))  # fmt: skip
        ax.set_ylabel(label, fontsize=9)
        fig.colorbar(image, cax=ax.inset_axes((1.005, 0.0, 0.008, 1.0)))  # keeps ax's width
    axes[-1].set_xlabel("time step")
    axes[-1].set_xlim(*extent_x)
    from io import BytesIO

    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
