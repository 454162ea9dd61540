"""Classification metrics from a confusion matrix, and a picture of it.

The training loop reduces evaluation statistics over batches by summing, so every metric here is
a function of the confusion matrix (``int64 (K, K)``, rows = true class, columns = predicted),
which sums exactly over batches. The definitions follow scikit-learn 1.x with
``zero_division=0``:

- ``accuracy`` = trace / total (``accuracy_score``); 0.0 for an empty matrix.
- ``precision_per_class[k]`` = tp / predicted-as-k, 0.0 where class k is never predicted;
  ``recall_per_class[k]`` = tp / truly-k, 0.0 where class k never occurs in y_true;
  ``f1_per_class[k]`` = 2 tp / (2 tp + fp + fn), 0.0 where that is 0/0. These lists have all K
  classes (``*_score(labels=range(K), average=None, zero_division=0)``).
- ``macro_f1`` = mean F1 over the classes that occur in y_true **or** y_pred (a non-zero row or
  column), which is what ``f1_score(average="macro")`` does when ``labels`` is not given: a class
  absent from both is left out, a class that occurs only in one of them counts with F1 = 0.
- ``balanced_accuracy`` = mean recall over the classes that occur in y_true
  (``balanced_accuracy_score``: classes only predicted are left out).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch

from grukit.errors import DataError

__all__ = ["confusion_matrix", "metrics_from_confusion", "plot_confusion"]


def _as_labels(values: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{what}: expected a 1-d array of class indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{what}: expected integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def confusion_matrix(
    y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor, num_classes: int
) -> np.ndarray:
    """Counts ``cm[i, j]`` of cases of true class i predicted as j: int64 (K, K), K =
    ``num_classes``; ``y_true`` and ``y_pred`` are (N,) class indices in 0..K-1."""
    if num_classes < 1:
        raise DataError(f"confusion_matrix: expected num_classes >= 1, got {num_classes}")
    t = _as_labels(y_true, "confusion_matrix y_true")
    p = _as_labels(y_pred, "confusion_matrix y_pred")
    if t.shape != p.shape:
        raise DataError(
            f"confusion_matrix: y_true has {t.size} cases but y_pred has {p.size}; expected equal"
        )
    for what, a in (("y_true", t), ("y_pred", p)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            bad = int(a.min()) if a.min() < 0 else int(a.max())
            raise DataError(
                f"confusion_matrix: {what} holds class index {bad}; expected 0..{num_classes - 1}"
            )
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0.0 where den == 0 (scikit-learn's ``zero_division=0``)."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def metrics_from_confusion(cm: np.ndarray) -> dict[str, Any]:
    """accuracy, macro_f1, balanced_accuracy (floats) and recall_per_class,
    precision_per_class, f1_per_class, support (lists of K) from a (K, K) confusion matrix
    (rows true, columns predicted); see the module docstring for the exact definitions."""
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise DataError(f"metrics_from_confusion: expected a square (K, K) matrix, got {m.shape}")
    if not np.issubdtype(m.dtype, np.number) or np.any(m < 0):
        raise DataError("metrics_from_confusion: expected non-negative counts")
    m = m.astype(np.float64)
    tp = np.diag(m)
    true_count = m.sum(axis=1)
    pred_count = m.sum(axis=0)
    total = m.sum()
    precision = _ratio(tp, pred_count)
    recall = _ratio(tp, true_count)
    f1 = _ratio(2 * tp, true_count + pred_count)  # 2tp / (2tp + fp + fn)
    present = (true_count > 0) | (pred_count > 0)
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "balanced_accuracy": float(recall[true_count > 0].mean()) if total > 0 else 0.0,
        "recall_per_class": [float(v) for v in recall],
        "precision_per_class": [float(v) for v in precision],
        "f1_per_class": [float(v) for v in f1],
        "support": [int(v) for v in true_count],
    }


def plot_confusion(
    cm: np.ndarray, classes: list[str], path: str | os.PathLike[str], *, title: str = ""
) -> None:
    """Write a PNG of the (K, K) confusion matrix ``cm`` to ``path`` atomically: rows true class,
    columns predicted, the count in each cell, colour = the count's share of its row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no display, no global state
    from matplotlib.figure import Figure

    from grukit.checkpoint import atomic_write_bytes

    m = np.asarray(cm, dtype=np.int64)
    k = len(classes)
    if m.shape != (k, k):
        raise DataError(
            f"plot_confusion: expected a ({k}, {k}) matrix for {k} classes, got {m.shape}"
        )
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0)
    size = min(max(4.0, 0.55 * k + 2.0), 24.0)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(k), labels=classes, rotation=90 if k > 12 else 0)
    ax.set_yticks(range(k), labels=classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    if k <= 30:
        font = 9 if k <= 12 else 6
        for i in range(k):
            for j in range(k):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color=colour, fontsize=font)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
