"""Forecast errors as batch sums, their reduction (MAE, RMSE, MASE, sMAPE) and a forecast plot.

With e = ŷ - y over every origin, step and target (n values):
MAE = sum|e| / n, RMSE = sqrt(sum e^2 / n), MASE = MAE / scale where scale is the in-sample MAE
of the seasonal naive forecast on the train span (Hyndman & Koehler 2006), and
sMAPE = (1/n) sum 200 |e| / (|y| + |ŷ|) in percent (a term is 0 where y = ŷ = 0).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from grukit.errors import DataError
from grukit.tasks.forecast.data import Split

__all__ = ["error_sums", "forecast_metrics", "mase_scale", "metrics_from_sums", "plot_forecast"]


def _array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def error_sums(
    pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor
) -> dict[str, float]:
    """Sums over all entries of equally shaped ``pred`` and ``truth`` (any shape, e.g. (N, H, K)):
    ``abs_error`` = sum|e|, ``sq_error`` = sum e^2, ``smape_terms`` = sum 200|e|/(|y|+|ŷ|) (0 where
    both are 0) and ``count`` = n."""
    p, y = _array(pred), _array(truth)
    if p.shape != y.shape:
        raise DataError(f"forecast metrics: predictions of shape {p.shape}, truth {y.shape}")
    e = np.abs(p - y)
    denom = np.abs(p) + np.abs(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(denom > 0, 200.0 * e / np.where(denom > 0, denom, 1.0), 0.0)
    return {
        "abs_error": float(e.sum()),
        "sq_error": float((e * e).sum()),
        "smape_terms": float(terms.sum()),
        "count": float(e.size),
    }


def metrics_from_sums(sums: Mapping[str, float], *, mase_scale: float) -> dict[str, float]:
    """``mae``, ``rmse``, ``mase`` (= mae / mase_scale) and ``smape`` (percent) from summed
    :func:`error_sums` (sums of several batches add up key by key)."""
    n = float(sums.get("count", 0))
    if n <= 0:
        raise DataError("forecast metrics: no forecast was summed (count is 0)")
    if not (mase_scale > 0 and math.isfinite(mase_scale)):
        raise DataError(f"forecast metrics: mase_scale must be a positive number, got {mase_scale}")
    mae = float(sums["abs_error"]) / n
    return {
        "mae": mae,
        "rmse": math.sqrt(float(sums["sq_error"]) / n),
        "mase": mae / mase_scale,
        "smape": float(sums["smape_terms"]) / n,
    }


def mase_scale(y_train: np.ndarray, season: int | None) -> float:
    """(1 / (n - m)) sum_{t=m}^{n-1} |y_t - y_{t-m}| on the train span y_train (n,) or (n, K),
    m = ``season`` or 1; a zero scale (a constant train span) is refused."""
    y = np.asarray(y_train, dtype=np.float64)
    m = int(season) if season else 1
    if m < 1:
        raise DataError(f"mase_scale: the season must be >= 1, got {season}")
    if len(y) <= m:
        raise DataError(
            f"mase_scale: the train span holds {len(y)} steps; the seasonal naive with lag {m} "
            f"needs more than {m}"
        )
    if not np.isfinite(y).all():
        raise DataError("mase_scale: the train span holds NaN or Inf values")
    scale = float(np.mean(np.abs(y[m:] - y[:-m])))
    if scale <= 0:
        raise DataError(
            f"mase_scale: the seasonal naive (lag {m}) is exact on the train span (scale 0); "
            "MASE is undefined for such a series"
        )
    return scale


def forecast_metrics(
    pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, *, mase_scale: float
) -> dict[str, float]:
    """:func:`metrics_from_sums` of :func:`error_sums` (one batch)."""
    return metrics_from_sums(error_sums(pred, truth), mase_scale=mase_scale)


def plot_forecast(
    time: np.ndarray,
    y: np.ndarray,
    split: Split,
    origin_index: int,
    forecasts: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    *,
    title: str = "",
) -> None:
    """A PNG of the history before series index ``origin_index`` (the forecast origin), the truth
    after it and each model's forecast (H,) from it; the split boundaries are marked.  Written
    atomically (matplotlib's Agg backend, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from grukit.io import atomic_write_bytes

    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)[:, 0]
    time = np.asarray(time)
    o = int(origin_index)
    if not 0 < o < len(y):
        raise DataError(f"plot_forecast: origin {o} is outside the series [1, {len(y)})")
    horizon = max((len(np.asarray(f).reshape(-1)) for f in forecasts.values()), default=1)
    lo = max(0, o - max(4 * horizon, 36))
    hi = min(len(y), o + 2 * horizon)
    fig = Figure(figsize=(7.5, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(time[lo:o], y[lo:o], color="0.3", lw=1.2, label="history")
    ax.plot(time[o - 1 : hi], y[o - 1 : hi], color="0.3", lw=1.2, ls="--", label="truth")
    for name, f in forecasts.items():
        f = np.asarray(f, dtype=np.float64).reshape(-1)
        n = min(len(f), len(y) - o)
        ax.plot(time[o : o + n], f[:n], marker=".", lw=1.2, label=name)
    ax.axvline(time[o], color="0.6", lw=0.8)
    for edge, label in ((split.train_end, "valid"), (split.valid_end, "test")):
        if lo < edge < hi:
            ax.axvline(time[edge], color="tab:red", lw=0.8, ls=":")
            ax.text(time[edge], ax.get_ylim()[1], f" {label}", va="top", fontsize=8)
    ax.set_title(title or "forecast")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
