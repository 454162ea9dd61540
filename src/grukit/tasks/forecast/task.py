"""Time-series forecasting: a GRU encoder over a window, ``horizon`` future values at once.

Protocol (leak-free, :mod:`grukit.tasks.forecast.data`): the series is split in time into train
/ valid / test spans; the scaler is fitted on the train span only; a training window and its
targets lie entirely in the train span; a valid or test origin has all its targets inside its
span and reads the ``window`` observed values before it (rolling-origin evaluation, stride 1).
The model (:class:`grukit.models.Forecaster`) sees the scaled targets and covariates of the
window and predicts the change of each target from its last observed value for every step of
the horizon (direct multi-horizon; ``task.decoder = "autoregressive"`` feeds each step back).
The loss is the squared error summed over the batch's windows, steps and targets (scaled).

Metrics, in the series' own units, over every origin and step: MAE, RMSE, MASE (MAE divided by
the in-sample MAE of the seasonal naive forecast on the train span) and sMAPE (percent); MASE is
watched. The baselines (naive, seasonal naive, ETS, ARIMA; :mod:`.baselines`) forecast from the
very same origins and are reported beside the GRU under ``baselines``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grukit.errors import ConfigError, DataError
from grukit.models import Forecaster
from grukit.tasks.base import Task, TaskConfig, opt
from grukit.tasks.forecast.data import (
    Scaler,
    Series,
    Split,
    chronological_split,
    infer_season,
    load_series,
    window_origins,
)
from grukit.tasks.forecast.metrics import (
    error_sums,
    forecast_metrics,
    mase_scale,
    metrics_from_sums,
    plot_forecast,
)

__all__ = ["ForecastBatch", "ForecastConfig", "ForecastTask"]

SPLITS = ("train", "valid", "test")
METRICS = ("mae", "rmse", "mase", "smape")


@dataclass
class ForecastConfig(TaskConfig):
    """``[task]`` of the forecasting task."""

    name: str = opt("forecast", "task: forecast (multi-step time-series forecasting)")
    data: str = opt("sunspots", "sunspots, co2, nile, elnino (shipped by statsmodels) or a CSV")
    target: str = opt("", "target column(s), comma-separated (default: the first value column)")
    covariates: str = opt("", "covariate columns, comma-separated (inputs only)")
    time_column: str = opt("", "the time column (default: detected)")
    missing: str = opt("refuse", "empty cells in a CSV: refuse, or interpolate (interior gaps)")
    window: int = opt(32, "input window length (steps the model reads before each origin)")
    horizon: int = opt(12, "steps forecast from each origin")
    valid_fraction: float = opt(0.15, "share of the series (in time) for validation")
    test_fraction: float = opt(0.15, "share of the series (the end) for the test")
    season: int = opt(0, "season length in steps for seasonal naive / ETS / ARIMA / MASE "
                      "(0: from the time column, else inferred from the train span)")  # fmt: skip
    decoder: str = opt("direct", "direct (all steps at once) or autoregressive")
    baselines: bool = opt(True, "compute naive, seasonal naive, ETS and ARIMA on the same origins")

    def validate(self) -> None:
        if self.window < 1 or self.horizon < 1:
            raise ConfigError(
                f"task.window and task.horizon must be >= 1, got {self.window}, {self.horizon}"
            )
        if self.missing not in ("refuse", "interpolate"):
            raise ConfigError(f"task.missing must be refuse or interpolate, got {self.missing!r}")
        if self.decoder not in ("direct", "autoregressive"):
            raise ConfigError(
                f"task.decoder must be direct or autoregressive, got {self.decoder!r}"
            )
        if self.season < 0 or self.season == 1:
            raise ConfigError(f"task.season must be 0 (infer) or >= 2, got {self.season}")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise ConfigError(f"task.{name} must be in (0, 0.5), got {value}")


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


@dataclass
class ForecastBatch:
    inputs: Tensor  # (W, N, targets + covariates), scaled
    targets: Tensor  # (N, H, targets), scaled
    origins: Tensor  # (N,) index of each window's first forecast step
    items: int


class ForecastTask(Task):
    """Forecasting on a :class:`Series` (see the module docstring)."""

    name = "forecast"
    Config = ForecastConfig
    monitor = "mase"
    modes = {"mae": "min", "rmse": "min", "mase": "min", "smape": "min"}
    headline = METRICS
    unit = "window"
    defaults = {
        "model.hidden_size": 64,
        "optim.lr": 3e-3,
        "optim.batch_size": 16,
        "optim.epochs": 200,
        "optim.patience": 30,
        "optim.weight_noise": 0.0,
        "optim.ema": 0.0,
        "optim.weight_decay": 1e-4,
    }

    def __init__(
        self,
        series: Series,
        config: ForecastConfig | None = None,
        *,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = c = config or ForecastConfig(data=series.name)
        self.series = series
        self.split: Split = chronological_split(
            len(series.values), valid_fraction=c.valid_fraction, test_fraction=c.test_fraction,
            window=c.window, horizon=c.horizon,
        )  # fmt: skip
        self.y = series.target_values().astype(np.float64)  # (T, targets), original units
        inputs = np.concatenate([self.y, series.covariate_values()], axis=1)
        state = dict(state or {})
        if "scaler" in state:
            self.scaler = Scaler.from_state(state["scaler"])
        else:  # fitted on the train span only
            self.scaler = Scaler.fit(inputs[: self.split.train_end])
        self.x = torch.as_tensor(self.scaler.transform(inputs), dtype=torch.float32)
        self.n_targets = self.y.shape[1]
        train_y = self.y[: self.split.train_end, 0]
        self.season = int(state.get("season") or c.season or series.season or 0) or (
            infer_season(train_y) or 0
        )  # fmt: skip
        self.scale = float(state.get("mase_scale") or mase_scale(train_y, self.season or None))
        self.origins = {
            s: window_origins(self.split, s, window=c.window, horizon=c.horizon) for s in SPLITS
        }
        for s in SPLITS:
            if len(self.origins[s]) == 0:
                raise DataError(
                    f"{series.name}: the {s} span holds no window of {c.window} + horizon "
                    f"{c.horizon} steps; use a shorter --window or --horizon"
                )
        self._forecasts: dict[str, dict[str, np.ndarray]] = {}  # split -> baseline -> forecasts

    # ------------------------------------------------------------------ Task

    @classmethod
    def load(
        cls, config: TaskConfig, *, progress: bool = True, state: Mapping[str, Any] | None = None
    ) -> ForecastTask:
        assert isinstance(config, ForecastConfig)
        return cls(_load(config, config.data), config, state=state)

    def state(self) -> dict[str, Any]:
        return {
            "scaler": self.scaler.state(),
            "season": self.season,
            "mase_scale": self.scale,
            "targets": list(self.series.targets),
            "covariates": list(self.series.covariates),
        }

    def describe(self) -> str:
        s = self.split
        return (
            f"{self.series.name} ({', '.join(self.series.targets)}; {len(self.y)} steps, season "
            f"{self.season or 'none'}): train [0, {s.train_end}), valid [{s.train_end}, "
            f"{s.valid_end}), test [{s.valid_end}, {s.length}); window {self.config.window}, "
            f"horizon {self.config.horizon}; "
            + ", ".join(f"{k} {len(v)} windows" for k, v in self.origins.items())
        )

    def size(self, split: str) -> int:
        return len(self.origins[split])

    def build_model(self, model: Any, cell: Any = None) -> nn.Module:
        return Forecaster(
            self.x.shape[1],
            self.n_targets,
            self.config.horizon,
            model,
            self.config.decoder,
            cell=cell,
        )

    def _batch(self, origins: np.ndarray) -> ForecastBatch:
        W, H = self.config.window, self.config.horizon
        o = torch.as_tensor(origins, dtype=torch.long)
        steps_in = o[None, :] - W + torch.arange(W)[:, None]  # (W, N)
        steps_out = o[:, None] + torch.arange(H)[None, :]  # (N, H)
        return ForecastBatch(
            inputs=self.x[steps_in],
            targets=self.x[steps_out, : self.n_targets],
            origins=o,
            items=len(origins),
        )

    def window(self, split: str, index: int) -> Tensor:
        """The input window ``(W, targets + covariates)`` (scaled) of ``split``'s origin
        ``index``: what the model reads to forecast from that origin."""
        return self._batch(self.origins[split][index : index + 1]).inputs[:, 0]

    def batches(
        self, split: str, batch_size: int, *, shuffle: bool = False, generator: Any = None
    ) -> Iterator[ForecastBatch]:
        origins = self.origins[split]
        if shuffle:
            origins = origins[torch.randperm(len(origins), generator=generator).numpy()]
        for start in range(0, len(origins), batch_size):
            yield self._batch(origins[start : start + batch_size])

    def loss(self, model: nn.Module, batch: ForecastBatch) -> tuple[Tensor, int]:
        """Squared error summed over windows, steps and targets (scaled units), and its count."""
        device = next(model.parameters()).device
        pred = model(batch.inputs.to(device))
        target = batch.targets.to(device)
        return ((pred - target) ** 2).sum(), target.numel()

    def _unscale(self, pred: Tensor) -> np.ndarray:
        """(N, H, targets) scaled -> original units."""
        mean = self.scaler.mean[: self.n_targets]
        std = self.scaler.std[: self.n_targets]
        return pred.detach().double().cpu().numpy() * std + mean

    def eval_sums(self, model: nn.Module, batch: ForecastBatch) -> dict[str, Any]:
        device = next(model.parameters()).device
        pred = self._unscale(model(batch.inputs.to(device)))
        steps = batch.origins.numpy()[:, None] + np.arange(self.config.horizon)[None, :]
        return error_sums(pred, self.y[steps])

    def metrics(self, sums: Mapping[str, Any], split: str) -> dict[str, Any]:
        """mae, rmse, mase, smape of the GRU, ``windows`` and, for valid and test, the
        ``baselines`` on the same origins."""
        result = dict(metrics_from_sums(sums, mase_scale=self.scale))
        result["windows"] = len(self.origins[split])
        if self.config.baselines and split != "train":
            result["baselines"] = self.baseline_metrics(split)
        return result

    def baseline_forecasts(self, split: str) -> dict[str, np.ndarray]:
        """Each baseline's forecasts ``(origins, H, targets)`` from ``split``'s origins (valid or
        test). Both splits are forecast in one call, so ETS and ARIMA are fitted once."""
        from grukit.tasks.forecast.baselines import run_baselines

        if not self._forecasts:
            origins = np.concatenate([self.origins["valid"], self.origins["test"]])
            per_target = [
                run_baselines(
                    self.y[:, k],
                    origins,
                    self.config.horizon,
                    train_end=self.split.train_end,
                    season=self.season or None,
                )  # fmt: skip
                for k in range(self.n_targets)
            ]
            n = len(self.origins["valid"])
            for name in per_target[0]:
                both = np.stack([p[name] for p in per_target], axis=-1)
                self._forecasts.setdefault("valid", {})[name] = both[:n]
                self._forecasts.setdefault("test", {})[name] = both[n:]
        return self._forecasts[split]

    def baseline_metrics(self, split: str) -> dict[str, Any]:
        """Each baseline's metrics on ``split``'s origins, the same definitions as the GRU's."""
        steps = self.origins[split][:, None] + np.arange(self.config.horizon)[None, :]
        truth = self.y[steps]
        return {
            name: forecast_metrics(pred, truth, mase_scale=self.scale)
            for name, pred in self.baseline_forecasts(split).items()
        }

    def summary(self, result: Mapping[str, Any]) -> str:
        """The GRU and every baseline on the test (or given) split, side by side."""
        lines = []
        for split in ("valid", "test"):
            if split not in result:
                continue
            lines.append(f"{split} ({result[split].get('windows', '?')} origins):")
            lines.append("  model            " + "".join(f"{m:>10s}" for m in METRICS))
            rows = {"gru (this run)": result[split], **result[split].get("baselines", {})}
            for name, m in rows.items():
                lines.append(f"  {name:16s} " + "".join(f"{m[k]:10.4f}" for k in METRICS))
        return "\n".join(lines)

    def report(
        self, model: nn.Module, run_dir: Path, result: Mapping[str, Any], *, log: Any = print
    ) -> dict[str, str]:
        """``forecast.png``: history, truth, the GRU's and each baseline's forecast from the
        first test origin."""
        first = self.origins["test"][:1]
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            pred = self._unscale(model(self._batch(first).inputs.to(device)))[0, :, 0]
        forecasts = {"gru": pred}
        if self.config.baselines:
            all_test = self.baseline_forecasts("test")
            forecasts.update({k: v[0, :, 0] for k, v in all_test.items()})
        path = run_dir / "forecast.png"
        plot_forecast(
            self.series.time, self.y[:, 0], self.split, int(first[0]), forecasts, path,
            title=f"{self.series.name}: forecast from the first test origin",
        )  # fmt: skip
        return {"forecast": str(path)}

    # ------------------------------------------------------------------ the future

    @torch.no_grad()
    def forecast_future(self, model: nn.Module, series: Series, horizon: int) -> np.ndarray:
        """``(horizon, targets)`` forecasts past the end of ``series`` (the run's columns) from
        its last ``window`` values, in the series' units; beyond the model's own horizon the
        forecasts are fed back (only without covariates)."""
        c = self.config
        if list(series.targets) != list(self.series.targets) or list(series.covariates) != list(
            self.series.covariates
        ):
            raise DataError(
                f"{series.name}: its columns {series.targets + series.covariates} do not match "
                f"the run's {self.series.targets + self.series.covariates}"
            )
        if len(series.values) < c.window:
            raise DataError(
                f"{series.name}: needs at least {c.window} rows (the window), has "
                f"{len(series.values)}"
            )
        if horizon > c.horizon and series.covariates:
            raise ConfigError(
                f"a horizon of {horizon} is longer than the model's {c.horizon}, and with "
                f"covariates the forecasts cannot be fed back; ask for at most {c.horizon}"
            )
        model.eval()
        device = next(model.parameters()).device
        inputs = np.concatenate([series.target_values(), series.covariate_values()], axis=1)
        history = torch.as_tensor(self.scaler.transform(inputs), dtype=torch.float32)[-c.window :]
        produced: list[np.ndarray] = []
        while True:
            step = model(history[:, None, :].to(device))[0].cpu()  # (H, targets) scaled
            produced.append(self._unscale(step[None])[0])
            if sum(len(p) for p in produced) >= horizon:
                return np.concatenate(produced)[:horizon]
            history = torch.cat([history, step], dim=0)[-c.window :]

    def forecast_csv(self, model: nn.Module, data: str, horizon: int, out: Path) -> int:
        """Write ``step, time, <targets>`` for ``horizon`` steps past the end of ``data`` (a CSV
        or named series with the run's columns); see :meth:`forecast_future`."""
        from grukit.io import atomic_write_text

        series = _load(self.config, data)
        future = self.forecast_future(model, series, horizon)
        times = _future_times(series.time, horizon)
        rows = [["step", "time", *series.targets]]
        for h in range(horizon):
            rows.append([str(h + 1), str(times[h]), *(f"{v:.6g}" for v in future[h])])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        atomic_write_text(out, buf.getvalue())
        return horizon


def _load(config: ForecastConfig, data: str) -> Series:
    target = _columns(config.target)
    return load_series(
        data,
        target=target or None,
        covariates=_columns(config.covariates),
        time_column=config.time_column or None,
        missing=config.missing,
    )


def _future_times(time: np.ndarray, horizon: int) -> list[Any]:
    """The times after the last one, continuing its last spacing ('' when irregular)."""
    if len(time) < 2:
        return [""] * horizon
    step = time[-1] - time[-2]
    if np.issubdtype(time.dtype, np.datetime64):
        # months and years are not fixed spans: continue by calendar month when ~monthly
        days = step / np.timedelta64(1, "D")
        if 27 <= days <= 32 or 360 <= days <= 367:
            months = 1 if days <= 32 else 12
            last = time[-1].astype("datetime64[M]")
            return [str(last + months * (h + 1)) for h in range(horizon)]
        return [str(time[-1] + step * (h + 1)) for h in range(horizon)]
    return [time[-1] + step * (h + 1) for h in range(horizon)]
