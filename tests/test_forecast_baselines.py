"""Forecasting baselines and metrics: hand computations, statsmodels references, no peeking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grukit.errors import DataError
from grukit.tasks.forecast import baselines as B
from grukit.tasks.forecast.data import chronological_split, load_named_series, window_origins
from grukit.tasks.forecast.metrics import (
    error_sums,
    forecast_metrics,
    mase_scale,
    metrics_from_sums,
    plot_forecast,
)


def seasonal_series(n: int = 80, season: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 10 + 0.2 * t + 3 * np.sin(2 * np.pi * t / season + 0.3) + 0.5 * rng.normal(size=n)


# ---------------------------------------------------------------------------- simple baselines


def test_naive_and_seasonal_naive_by_hand():
    y = np.arange(10.0) ** 2  # 0 1 4 9 16 25 36 49 64 81
    origins = np.array([5, 7])
    np.testing.assert_array_equal(B.naive(y, origins, 3), [[16, 16, 16], [36, 36, 36]])
    # season 3 from o=5: h=0 -> y[2], h=1 -> y[3], h=2 -> y[4], h=3 -> y[2]
    np.testing.assert_array_equal(
        B.seasonal_naive(y, origins, 4, 3), [[4, 9, 16, 4], [16, 25, 36, 16]]
    )
    y2 = np.stack([y, -y], axis=1)
    out = B.naive(y2, origins, 2)
    assert out.shape == (2, 2, 2) and out[1, 0, 1] == -36
    with pytest.raises(DataError, match="origins"):
        B.seasonal_naive(y, np.array([2]), 2, 3)


def test_seasonal_naive_fallbacks():
    y = seasonal_series(80, 4)
    o = np.array([60, 70])
    notes: list[str] = []
    got = B.BASELINES["seasonal_naive"](y, o, 4, train_end=56, season=None, notes=notes)
    np.testing.assert_array_equal(got, B.seasonal_naive(y, o, 4, 4))  # inferred on train
    assert any("inferred" in n for n in notes)
    rng = np.random.default_rng(3)
    noise = rng.normal(size=80)
    notes = []
    got = B.BASELINES["seasonal_naive"](noise, o, 3, train_end=56, season=None, notes=notes)
    np.testing.assert_array_equal(got, B.naive(noise, o, 3))
    assert any("naive forecast" in n for n in notes)


# ---------------------------------------------------------------------------- ETS / ARIMA


@pytest.mark.parametrize("season", [4, None])
def test_ets_equals_direct_statsmodels_forecast(season):
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    y = seasonal_series(80, 4)
    origins = np.array([56, 63, 71])
    H = 5
    got = B.ets(y, origins, H, train_end=56, season=season)
    assert got.shape == (3, H)
    res = B._ets_fit(y[:56], season)
    spec = B._ets_spec(season)
    for i in (0, 2):
        o = origins[i]
        with B._quiet():  # warnings off, one BLAS thread
            ref = ETSModel(y[:o], **spec).smooth(res.params).forecast(H)
        np.testing.assert_allclose(got[i], ref, rtol=1e-8, atol=1e-8)


def test_arima_equals_direct_statsmodels_forecast():
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    y = seasonal_series(80, 4)
    origins = np.array([56, 60, 73])
    H = 6
    for order, seasonal, trend in [((1, 1, 1), (0, 1, 1, 4), "n"), ((2, 0, 0), (0, 0, 0, 0), "c")]:
        got = B.arima(y, origins, H, train_end=56, season=4, order=(order, seasonal))
        with B._quiet():
            res = SARIMAX(
                y[:56], order=order, seasonal_order=seasonal, trend=trend, concentrate_scale=True
            ).fit(disp=False, maxiter=200, cov_type="none")
            for i in (0, 2):
                ref = res.apply(y[: origins[i]]).forecast(H)
                np.testing.assert_allclose(got[i], ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["ets", "arima"])
def test_forecasts_use_only_the_past(name):
    y = seasonal_series(80, 4)
    o = np.array([60, 68])
    fn = B.BASELINES[name]
    a = fn(y, o, 4, train_end=56, season=4)
    changed = y.copy()
    changed[68:] += 100.0  # the future of the second origin
    b = fn(changed, o, 4, train_end=56, season=4)
    np.testing.assert_array_equal(a, b)
    changed[60:] -= 50.0  # now the history of the second origin changes too
    c = fn(changed, o, 4, train_end=56, season=4)
    np.testing.assert_array_equal(a[0], c[0])
    assert not np.allclose(a[1], c[1])


def test_arima_order_choice_and_run_baselines():
    y = seasonal_series(100, 4, seed=2)
    order, seasonal = B.choose_arima_order(y[:70], 4)
    assert 0 <= order[0] <= 3 and order[1] in (0, 1) and 0 <= order[2] <= 2
    assert seasonal in ((0, 1, 1, 4), (1, 0, 0, 4))
    o = np.arange(75, 95)
    notes: list[str] = []
    out = B.run_baselines(y, o, 5, train_end=70, season=4, notes=notes)
    assert set(out) == {"naive", "seasonal_naive", "ets", "arima"}
    assert all(v.shape == (20, 5) and np.isfinite(v).all() for v in out.values())
    assert any(n.startswith("arima: order") for n in notes)
    multi = B.run_baselines(np.stack([y, 2 * y], 1), o, 5, train_end=70, season=4)
    assert all(v.shape == (20, 5, 2) for v in multi.values())
    np.testing.assert_allclose(multi["arima"][..., 0], out["arima"])


def test_baselines_on_sunspots_beat_nothing_silly():
    y = load_named_series("sunspots").values[:, 0]
    split = chronological_split(len(y), window=20, horizon=3)
    o = window_origins(split, "test", window=20, horizon=3)
    out = B.run_baselines(y, o, 3, train_end=split.train_end, season=None)
    truth = y[o[:, None] + np.arange(3)]
    mae = {k: np.abs(v - truth).mean() for k, v in out.items()}
    assert mae["arima"] < mae["naive"]  # an AR model knows the cycle


def test_bad_input_refused():
    with pytest.raises(DataError, match="ets"):
        B.ets(np.r_[1.0, np.nan, 2.0] * np.ones(3), np.array([2]), 1, train_end=3, season=None)
    with pytest.raises(DataError, match="arima"):
        B.arima(np.ones(5), np.array([4]), 1, train_end=4, season=None)


# ---------------------------------------------------------------------------- metrics


def test_error_sums_and_metrics_by_hand():
    pred = np.array([[1.0, 2.0], [0.0, -1.0]])
    truth = np.array([[2.0, 2.0], [0.0, 1.0]])
    s = error_sums(pred, truth)
    assert s == {"abs_error": 3.0, "sq_error": 5.0, "smape_terms": pytest.approx(
        200 * 1 / 3 + 0 + 0 + 200 * 2 / 2
    ), "count": 4.0}  # fmt: skip
    m = metrics_from_sums(s, mase_scale=0.5)
    assert m["mae"] == 0.75 and m["rmse"] == pytest.approx(math.sqrt(5 / 4))
    assert m["mase"] == 1.5 and m["smape"] == pytest.approx((200 / 3 + 200) / 4)
    t = error_sums(torch.tensor(pred), torch.tensor(truth))
    assert t == s
    # sums over batches add up
    a, b = error_sums(pred[:1], truth[:1]), error_sums(pred[1:], truth[1:])
    total = {k: a[k] + b[k] for k in a}
    assert forecast_metrics(pred, truth, mase_scale=0.5) == pytest.approx(
        metrics_from_sums(total, mase_scale=0.5)
    )
    with pytest.raises(DataError):
        error_sums(pred, truth[:1])
    with pytest.raises(DataError):
        metrics_from_sums(
            {"abs_error": 0, "sq_error": 0, "smape_terms": 0, "count": 0}, mase_scale=1
        )


def test_smape_with_zeros():
    s = error_sums(np.zeros(3), np.array([0.0, 1.0, 0.0]))
    assert s["smape_terms"] == pytest.approx(200.0)  # 0 (both zero) + 200 + 0
    assert forecast_metrics(np.zeros(2), np.zeros(2), mase_scale=1)["smape"] == 0.0


def test_mase_scale_season_1_and_4():
    y = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 8.0])
    assert mase_scale(y, None) == pytest.approx((2 + 1 + 3 + 1 + 4) / 5)
    assert mase_scale(y, 1) == mase_scale(y, None)
    assert mase_scale(y, 4) == pytest.approx((abs(4 - 1) + abs(8 - 3)) / 2)
    with pytest.raises(DataError, match="scale 0"):
        mase_scale(np.array([1.0, 2.0, 1.0, 2.0]), 2)
    with pytest.raises(DataError):
        mase_scale(y[:3], 4)


def test_plot_forecast_writes_png(tmp_path):
    s = load_named_series("co2")
    y = s.values[:, 0]
    split = chronological_split(len(y), window=24, horizon=12)
    o = split.valid_end
    path = tmp_path / "f.png"
    plot_forecast(
        s.time, y, split, o, {"naive": B.naive(y, np.array([o]), 12)[0]}, path, title="co2"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
