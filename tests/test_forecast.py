"""The forecasting task end to end: leak-free windows and scaling, the GRU beside the baselines
in ``final.json`` and ``eval --json``, ``grukit forecast``, exact resume, one-line errors, and the
estimator."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from grukit.cli import main
from grukit.runconfig import make_config
from grukit.tasks.forecast.data import Series
from grukit.tasks.forecast.task import ForecastConfig, ForecastTask
from grukit.train import Trainer

METRICS = ("mae", "rmse", "mase", "smape")


def series_values(n: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + 3 * np.sin(2 * np.pi * t / 12) + 0.02 * t + 0.3 * rng.normal(size=n)


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "demand.csv"
    values = series_values()
    lines = ["month,demand,temperature"]
    for i, v in enumerate(values):
        year, month = 2000 + i // 12, i % 12 + 1
        lines.append(f"{year}-{month:02d}-01,{v:.4f},{np.cos(i):.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def quiet(_: str) -> None:
    pass


def config(data: Path, out: Path, **extra: Any) -> Any:
    values: dict[str, Any] = dict(
        task="forecast", data=str(data), target="demand", window=12, horizon=4,
        hidden_size=8, epochs=3, batch_size=16, seed=0, out=str(out), progress=False,
    )  # fmt: skip
    values.update(extra)
    return make_config(**values)


def make_task(values: np.ndarray, **options: Any) -> ForecastTask:
    series = Series(
        name="s", time=np.arange(len(values)), values=values[:, None], columns=["y"],
        targets=["y"], covariates=[], season=12, source="test",
    )  # fmt: skip
    return ForecastTask(series, ForecastConfig(window=12, horizon=4, baselines=False, **options))


# ---------------------------------------------------------------------------- no leakage


def test_nothing_after_the_train_span_reaches_the_scaler_or_the_training_batches() -> None:
    values = series_values()
    a = make_task(values)
    changed = values.copy()
    changed[a.split.train_end :] += 1000.0  # valid and test values only
    b = make_task(changed)
    assert a.scaler.state() == b.scaler.state(), "the scaler saw valid/test values"
    assert a.scale == b.scale, "the MASE scale saw valid/test values"
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for x, y in zip(a.batches("train", 8, shuffle=True, generator=g()),
                    b.batches("train", 8, shuffle=True, generator=g()), strict=True):  # fmt: skip
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
        last = int(x.origins.max()) + a.config.horizon
        assert last <= a.split.train_end, "a training window's targets cross into valid"
    for split in ("valid", "test"):
        lo, hi = a.split.span(split)
        origins = a.origins[split]
        assert origins.min() >= lo and origins.max() + a.config.horizon <= hi


# ---------------------------------------------------------------------------- end to end


def test_cli_train_eval_forecast(tiny_csv: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    status = main([
        "train", "--task", "forecast", "--data", str(tiny_csv), "--target", "demand",
        "--covariates", "temperature", "--horizon", "4", "--window", "12",
        "--hidden-size", "8", "--epochs", "3", "--out", str(run), "--no-progress",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0, err
    for name in ("gru (this run)", "naive", "seasonal_naive", "ets", "arima"):
        assert name in out, f"{name} missing from the printed table"
    final = json.loads((run / "final.json").read_text())
    assert final["monitor"] == "mase" and final["mode"] == "min"
    for split in ("valid", "test"):
        assert set(METRICS) <= set(final[split])
        assert set(final[split]["baselines"]) == {"naive", "seasonal_naive", "ets", "arima"}
        for metrics in final[split]["baselines"].values():
            assert all(np.isfinite(metrics[m]) for m in METRICS)
    # the naive forecast's MASE at horizon 4 is above its one-step in-sample scale's 1 or near
    assert final["test"]["baselines"]["naive"]["mase"] > 0
    assert (run / "forecast.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["eval", str(run), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(METRICS) <= set(result) and "baselines" in result
    assert result["mase"] == final["test"]["mase"]

    target = tmp_path / "future.csv"
    status = main(["forecast", str(run), "--data", str(tiny_csv), "--horizon", "3",
                   "--out", str(target)])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    rows = list(csv.DictReader(target.open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and set(rows[0]) == {
        "step", "time", "demand",
    }  # fmt: skip
    assert rows[0]["time"].startswith("2013-05"), rows[0]  # the month after the last row
    assert all(np.isfinite(float(r["demand"])) for r in rows)


def test_resume_of_a_forecasting_run_is_exact(tiny_csv: Path, tmp_path: Path) -> None:
    Trainer(config(tiny_csv, tmp_path / "straight", epochs=4), log=quiet).fit()
    Trainer(config(tiny_csv, tmp_path / "resumed", epochs=2), log=quiet).fit()
    Trainer.resume(tmp_path / "resumed", overrides={"epochs": 4}, log=quiet).fit()
    a = json.loads((tmp_path / "resumed" / "final.json").read_text())
    b = json.loads((tmp_path / "straight" / "final.json").read_text())
    assert a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--horizon", "40"], ["horizon"]),
        (["--target", "sales"], ["sales", "demand"]),
        (["--window", "0"], ["window"]),
    ],
    ids=["horizon-longer-than-test", "unknown-target", "zero-window"],
)
def test_bad_settings_are_one_line(
    tiny_csv: Path, tmp_path: Path, capsys, flags: list[str], words: list[str]
) -> None:
    argv = ["train", "--task", "forecast", "--data", str(tiny_csv), "--out",
            str(tmp_path / "run"), "--no-progress", "--target", "demand", *flags]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("grukit train: error: ") and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "run").exists()


def test_text_in_a_value_column_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("year,y\n" + "".join(f"{1900 + i},{i}\n" for i in range(50)) + "1950,oops\n")
    assert main(["train", "--task", "forecast", "--data", str(path), "--out",
                 str(tmp_path / "run"), "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "oops" in err or "52" in err, err


def test_the_default_series_works_offline(tmp_path: Path) -> None:
    cfg = make_config(task="forecast", epochs=1, hidden_size=8, out=str(tmp_path / "run"),
                      progress=False)  # fmt: skip
    assert cfg.task.data == "sunspots"
    result = Trainer(cfg, log=quiet).fit()
    assert result["test"]["baselines"]["arima"]["mase"] > 0


# ---------------------------------------------------------------------------- estimator


def test_gru_forecaster_fit_predict() -> None:
    from grukit import GRUForecaster

    y = series_values(120)
    model = GRUForecaster(window=12, horizon=4, hidden_size=8, epochs=3)
    assert model.fit(y) is model
    future = model.predict()
    assert future.shape == (4,) and np.isfinite(future).all()
    assert model.predict(10).shape == (10,)
    assert abs(future.mean() - y[-24:].mean()) < 10 * y.std()
