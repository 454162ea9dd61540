"""Forecasting data: CSV rules, named series, season inference, split, origins, scaler."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from grukit.errors import ConfigError, DataError
from grukit.tasks.forecast.data import (
    NAMED_SERIES,
    Scaler,
    chronological_split,
    infer_season,
    load_named_series,
    load_series,
    read_csv_series,
    window_origins,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "forecasting"


def write(tmp_path: Path, text: str, name: str = "s.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- CSV


def test_iso_dates_detected_by_name_and_monthly_season(tmp_path):
    p = write(tmp_path, "value,Date\n1,2020-01-01\n2,2020-02-01\n3,2020-03-01\n4,2020-04-01\n")
    s = read_csv_series(p)
    assert s.time.dtype == np.dtype("datetime64[ns]")
    assert str(s.time[1])[:10] == "2020-02-01"
    assert s.targets == ["value"] and s.columns == ["value"]
    assert s.season == 12
    np.testing.assert_array_equal(s.target_values()[:, 0], [1, 2, 3, 4])
    assert s.covariate_values().shape == (4, 0)
    assert "first non-time column" in s.source


def test_yyyymmdd_ints_first_column_weekly(tmp_path):
    p = write(tmp_path, "when,x\n19580329,1.5\n19580405,2\n19580412,3\n")
    s = read_csv_series(p)
    assert s.time.dtype.kind == "M"
    assert str(s.time[0])[:10] == "1958-03-29"
    assert s.season == 52


def test_integer_years_and_no_time_column(tmp_path):
    s = read_csv_series(write(tmp_path, "YEAR,a\n1700,5\n1701,11\n1702,16\n"))
    assert s.time.dtype == np.int64 and list(s.time) == [1700, 1701, 1702]
    assert s.season is None
    s = read_csv_series(write(tmp_path, "a,b\n0.5,1\n0.7,2\n0.9,3\n", "n.csv"))
    assert list(s.time) == [0, 1, 2] and s.targets == ["a"]


def test_time_column_given_and_unknown(tmp_path):
    p = write(tmp_path, "a,t,b\n1,10,4\n2,20,5\n3,30,6\n")
    s = read_csv_series(p, time_column="t", target="b")
    assert list(s.time) == [10, 20, 30] and s.target_values()[:, 0].tolist() == [4, 5, 6]
    with pytest.raises(DataError, match=r"no time column 'zz'.*\['a', 't', 'b'\]"):
        read_csv_series(p, time_column="zz")


def test_text_cell_refused_with_row_and_column(tmp_path):
    p = write(tmp_path, "year,x\n2000,1\n2001,2\n2002,abc\n2003,4\n")
    with pytest.raises(DataError, match=r"row 4, column 'x' holds 'abc'"):
        read_csv_series(p)


def test_unknown_target_lists_columns(tmp_path):
    p = write(tmp_path, "year,x,y\n2000,1,2\n2001,2,3\n2002,3,4\n")
    with pytest.raises(DataError, match=r"no value column 'z'.*\['year', 'x', 'y'\]"):
        read_csv_series(p, target="z")
    with pytest.raises(DataError, match="no value column 'q'"):
        read_csv_series(p, covariates=["q"])


def test_duplicate_and_unsorted_timestamps(tmp_path):
    p = write(tmp_path, "year,x\n2000,1\n2001,2\n2001,3\n2002,4\n")
    with pytest.raises(DataError, match=r"rows 3 and 4 have the same time"):
        read_csv_series(p)
    p = write(tmp_path, "date,x\n2000-01-01,1\n2000-03-01,2\n2000-02-01,3\n", "u.csv")
    with pytest.raises(DataError, match=r"row 4 .*sort the file"):
        read_csv_series(p)


def test_missing_refused_or_interpolated(tmp_path):
    p = write(tmp_path, "year,x\n2000,1\n2001,NA\n2002,\n2003,7\n2004,9\n")
    with pytest.raises(DataError, match=r"row 3, column 'x' is missing"):
        read_csv_series(p)
    s = read_csv_series(p, missing="interpolate")
    np.testing.assert_allclose(s.values[:, 0], [1, 3, 5, 7, 9])
    lead = write(tmp_path, "year,x\n2000,?\n2001,1\n2002,2\n", "l.csv")
    with pytest.raises(DataError, match=r"row 2, column 'x' is missing at the start"):
        read_csv_series(lead, missing="interpolate")
    trail = write(tmp_path, "year,x\n2000,1\n2001,2\n2002,nan\n", "t.csv")
    with pytest.raises(DataError, match="trailing"):
        read_csv_series(trail, missing="interpolate")


def test_interpolation_uses_time_not_rows(tmp_path):
    p = write(tmp_path, "year,x\n2000,0\n2001,NaN\n2004,8\n")
    s = read_csv_series(p, missing="interpolate")
    assert s.values[1, 0] == pytest.approx(2.0)


def test_covariates(tmp_path):
    p = write(tmp_path, "year,y,c1,c2\n2000,1,10,100\n2001,2,20,200\n2002,3,30,300\n")
    s = read_csv_series(p, target="y", covariates=["c2", "c1"])
    assert s.columns == ["y", "c2", "c1"] and s.covariates == ["c2", "c1"]
    np.testing.assert_array_equal(s.covariate_values(), [[100, 10], [200, 20], [300, 30]])
    s = read_csv_series(p, target=["y", "c1"])
    assert s.target_values().shape == (3, 2)
    with pytest.raises(ConfigError, match="repeat"):
        read_csv_series(p, target="y", covariates=["y"])


def test_too_short_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="empty"):
        read_csv_series(write(tmp_path, "", "e.csv"))
    with pytest.raises(DataError, match="0 data row"):
        read_csv_series(write(tmp_path, "year,x\n", "h.csv"))
    with pytest.raises(DataError, match="2 data row"):
        read_csv_series(write(tmp_path, "year,x\n1,2\n2,3\n", "s.csv"))
    with pytest.raises(DataError, match="no such file"):
        read_csv_series(tmp_path / "absent.csv")


def test_load_series_dispatch(tmp_path):
    p = write(tmp_path, "year,x\n2000,1\n2001,2\n2002,3\n")
    assert load_series(str(p)).targets == ["x"]
    assert load_series("SunSpots").name == "sunspots"
    with pytest.raises(DataError, match=r"unknown series 'foo'.*sunspots"):
        load_series("foo")
    with pytest.raises(ConfigError):
        load_series("nile", covariates=["x"])
    with pytest.raises(ConfigError):
        read_csv_series(p, missing="drop")


# ---------------------------------------------------------------------------- named series


def test_named_series_shapes():
    shapes = {"sunspots": (309, None), "co2": (526, 12), "nile": (100, None), "elnino": (732, 12)}
    for name in NAMED_SERIES:
        s = load_named_series(name)
        assert s.values.shape == (shapes[name][0], 1), name
        assert s.season == shapes[name][1], name
        assert np.isfinite(s.values).all()
        assert np.all(np.diff(s.time.astype(np.int64)) > 0)
    co2 = load_named_series("co2")
    assert str(co2.time[0])[:10] == "1958-03-01" and co2.columns == ["co2"]
    assert load_named_series("sunspots").time[0] == 1700


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no CSV copies at {SHARED}")
@pytest.mark.parametrize(
    ("name", "file", "column"),
    [("sunspots", "sunspots.csv", "SUNACTIVITY"), ("nile", "nile.csv", "volume")],
)
def test_named_yearly_agree_with_csv(name, file, column):
    if not (SHARED / file).exists():
        pytest.skip(f"{SHARED / file} is absent")
    ours = load_named_series(name)
    theirs = read_csv_series(SHARED / file, target=column)
    np.testing.assert_array_equal(ours.time, theirs.time)
    np.testing.assert_allclose(ours.values, theirs.values)


@pytest.mark.skipif(not (SHARED / "co2.csv").exists(), reason=f"no {SHARED / 'co2.csv'}")
def test_co2_monthly_agrees_with_csv_resampled():
    import pandas as pd

    df = pd.read_csv(SHARED / "co2.csv", dtype={"date": str})
    df.index = pd.to_datetime(df["date"], format="%Y%m%d")
    monthly = df["co2"].resample("MS").mean().interpolate()
    ours = load_named_series("co2")
    assert len(ours.values) == len(monthly)
    np.testing.assert_allclose(ours.values[:, 0], monthly.to_numpy())
    np.testing.assert_array_equal(ours.time, monthly.index.to_numpy().astype("datetime64[ns]"))
    weekly = read_csv_series(SHARED / "co2.csv", missing="interpolate")
    assert weekly.season == 52 and len(weekly.values) == len(df)


@pytest.mark.skipif(not (SHARED / "elnino.csv").exists(), reason=f"no {SHARED / 'elnino.csv'}")
def test_elnino_agrees_with_wide_csv():
    with open(SHARED / "elnino.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    flat = [float(v) for row in rows for v in row[1:13]]
    ours = load_named_series("elnino")
    np.testing.assert_allclose(ours.values[:, 0], flat)
    assert str(ours.time[0])[:7] == f"{int(rows[0][0])}-01"
    assert str(ours.time[13])[:7] == f"{int(rows[1][0])}-02"


# ---------------------------------------------------------------------------- season


def test_infer_season_sunspots_and_synthetic():
    y = load_named_series("sunspots").values[:, 0]
    assert infer_season(y) in (10, 11)
    t = np.arange(240)
    rng = np.random.default_rng(0)
    assert infer_season(0.05 * t + np.sin(2 * np.pi * t / 12) + 0.1 * rng.normal(size=240)) == 12
    assert infer_season(rng.normal(size=300)) is None
    assert infer_season(np.ones(50)) is None
    assert infer_season(np.cumsum(rng.normal(size=300))) is None  # a random walk: no period


# ---------------------------------------------------------------------------- split and origins


def test_split_fractions_and_spans():
    s = chronological_split(100, window=10, horizon=5)
    assert (s.train_end, s.valid_end, s.length) == (70, 85, 100)
    assert (
        s.span("train") == (0, 70) and s.span("valid") == (70, 85) and s.span("test") == (85, 100)
    )
    with pytest.raises(ConfigError):
        s.span("dev")


def test_split_refuses_horizon_longer_than_test():
    with pytest.raises(ConfigError, match=r"test span \[85, 100\).*15 steps.*horizon 20"):
        chronological_split(100, valid_fraction=0.3, test_fraction=0.15, window=5, horizon=20)
    with pytest.raises(ConfigError, match="valid span"):
        chronological_split(100, valid_fraction=0.05, test_fraction=0.2, window=5, horizon=10)
    with pytest.raises(ConfigError, match="train span"):
        chronological_split(100, window=66, horizon=5)
    with pytest.raises(ConfigError):
        chronological_split(100, valid_fraction=0.6, test_fraction=0.5, window=2, horizon=1)


@pytest.mark.parametrize(("window", "horizon", "stride"), [(10, 1, 1), (12, 7, 1), (5, 15, 3)])
def test_window_origins_never_leak(window, horizon, stride):
    split = chronological_split(120, window=window, horizon=horizon)
    train = window_origins(split, "train", window=window, horizon=horizon, stride=stride)
    assert len(train) and np.all(np.diff(train) > 0)
    assert train.min() - window >= 0
    assert train.max() + horizon <= split.train_end  # last target index < train_end
    assert train.max() + horizon > split.train_end - stride  # and the span is used up
    for which in ("valid", "test"):
        a, b = split.span(which)
        o = window_origins(split, which, window=window, horizon=horizon, stride=stride)
        assert len(o) and np.all(np.diff(o) > 0)
        assert o.min() >= a and o.max() + horizon <= b and o.min() - window >= 0
        if stride == 1:
            assert o.min() == max(a, window) and o.max() == b - horizon


def test_scaler_fitted_on_train_rows_only():
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 2.0, size=(100, 2))
    values[:, 1] = 5.0  # a constant column: std -> 1
    split = chronological_split(100, window=5, horizon=2)
    a = Scaler.fit(values[: split.train_end])
    changed = values.copy()
    changed[split.train_end :] = 1e6  # valid / test change: the scaler must not move
    b = Scaler.fit(changed[: split.train_end])
    assert a.state() == b.state()
    np.testing.assert_allclose(a.mean, values[:70].mean(axis=0))
    np.testing.assert_allclose(a.std, [values[:70, 0].std(), 1.0])
    z = a.transform(values)
    np.testing.assert_allclose(a.inverse(z), values)
    c = Scaler.from_state(a.state())
    np.testing.assert_array_equal(c.transform(values), z)
    with pytest.raises(DataError):
        Scaler.fit(np.array([[np.nan]]))
