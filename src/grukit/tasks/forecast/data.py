"""Series for forecasting: CSV files and classic named series, a chronological split, a scaler
fitted on the train span, and the forecast origins of each span (leak-free by construction).

CSV rules (:func:`read_csv_series`):

* The file is read with the :mod:`csv` module; the first row is the header, blank lines are
  skipped; cells are stripped of surrounding spaces.  Row numbers in messages are 1-based file
  lines (the header is line 1).
* Time column: ``time_column`` if given (an unknown name is refused, listing the columns); else
  the first column named ``date``, ``time``, ``timestamp``, ``year``, ``month``, ``week``, ``ds``
  or ``period`` (case-insensitive); else the first column if all its cells parse as dates (ISO
  ``2020-01-31``, ``2020-01``, ``2020-01-31 12:00``, or ``YYYYMMDD`` integers such as
  ``19580329``) or as integers (years, step numbers); else there is no time column and the time
  is the row number ``0..T-1``.  Eight-digit integers that are all valid ``YYYYMMDD`` dates are
  read as dates; other integers stay integers (int64), decimals are float64, dates are
  ``datetime64[ns]``.
* Timestamps must be strictly increasing: a duplicate timestamp is refused naming both rows, a
  decreasing one naming the row ("sort the file").
* ``target``: one or more column names; by default the first non-time column (and only that).
  ``covariates``: further input columns. Unknown names are refused, listing the columns.  Only
  the target and covariate columns are read, checked and kept (``values`` is targets, then
  covariates).
* A cell that is not a finite number in a used column is refused with its row and column.
* Missing cells (empty, ``NA``, ``NaN``, ``nan``, ``?``; case-insensitive): ``missing="refuse"``
  (the default) refuses the first one with its row and column; ``missing="interpolate"`` fills
  interior gaps by linear interpolation in time and refuses leading or trailing gaps.  A missing
  time cell is always refused.
* An empty file, a header without rows or fewer than 3 rows is refused.
* ``season``: from the median spacing of a datetime time column (daily -> 7, weekly -> 52,
  monthly -> 12, quarterly -> 4, yearly or other -> ``None``); ``None`` for numeric times.

Leakage (:func:`window_origins`): a forecast origin ``o`` is the index of the first predicted
step; the model reads ``values[o - window : o]`` and predicts ``values[o : o + horizon]``.  A
train origin has its whole window *and* its targets in ``[0, train_end)``.  A valid / test origin
has all its targets inside that span and ``o - window >= 0``: its inputs are the observed history
before the origin, which may reach back into earlier spans.  That is rolling-origin evaluation
(the forecaster at time ``o`` knows the past), not leakage: no target of a span is ever an input
or a training target before its origin.  :class:`Scaler` is fitted on train rows only.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grukit.errors import ConfigError, DataError

__all__ = [
    "NAMED_SERIES",
    "Scaler",
    "Series",
    "Split",
    "chronological_split",
    "infer_season",
    "load_named_series",
    "load_series",
    "read_csv_series",
    "window_origins",
]

NAMED_SERIES: tuple[str, ...] = ("sunspots", "co2", "nile", "elnino")
TIME_NAMES = ("date", "time", "timestamp", "year", "month", "week", "ds", "period")
MISSING_TOKENS = frozenset({"", "na", "nan", "?"})
SPLITS = ("train", "valid", "test")


@dataclass
class Series:
    """A regularly sampled multivariate series: values (T, K) float64, columns[k] names column k.

    ``time`` is (T,) ``datetime64[ns]``, int64 (years, steps) or float64; ``targets`` and
    ``covariates`` name columns of ``values``; ``season`` is the period in steps if known."""

    name: str
    time: np.ndarray
    values: np.ndarray
    columns: list[str]
    targets: list[str]
    covariates: list[str]
    season: int | None
    source: str

    def _select(self, names: Sequence[str]) -> np.ndarray:
        idx = [self.columns.index(c) for c in names]
        return np.asarray(self.values, dtype=np.float64)[:, idx].reshape(len(self.values), -1)

    def target_values(self) -> np.ndarray:
        """The target columns, (T, n_targets) float64."""
        return self._select(self.targets)

    def covariate_values(self) -> np.ndarray:
        """The covariate columns, (T, n_covariates) float64 (may be (T, 0))."""
        return self._select(self.covariates)


# ---------------------------------------------------------------------------- CSV


def _parse_int(cell: str) -> int | None:
    s = cell[1:] if cell[:1] in "+-" else cell
    return int(cell) if s.isdigit() else None


def _parse_dates(cells: Sequence[str]) -> np.ndarray | None:
    """``datetime64[ns]`` of all cells (ISO or YYYYMMDD), or None when one does not parse."""
    out = np.empty(len(cells), dtype="datetime64[ns]")
    for i, cell in enumerate(cells):
        text = cell
        if len(cell) == 8 and cell.isdigit():
            text = f"{cell[:4]}-{cell[4:6]}-{cell[6:]}"
        elif len(cell) < 7 or not cell[:4].isdigit() or cell[4:5] != "-":
            return None
        try:
            value = np.datetime64(text.replace(" ", "T").rstrip("Z"), "ns")
        except ValueError:
            return None
        if len(cell) == 8 and str(value)[:10] != text:  # e.g. 20231350 is not a date
            return None
        out[i] = value
    return out


def _parse_time(cells: Sequence[str], lines: Sequence[int], column: str, where: str) -> np.ndarray:
    """The time column as datetime64[ns], int64 or float64; refuses what is none of them."""
    for cell, line in zip(cells, lines, strict=True):
        if cell.lower() in MISSING_TOKENS:
            raise DataError(
                f"{where}: row {line}, time column {column!r} is empty; every row needs a time"
            )
    dates = _parse_dates(cells)
    if dates is not None:
        return dates
    ints = [_parse_int(c) for c in cells]
    if all(v is not None for v in ints):
        return np.asarray(ints, dtype=np.int64)
    out = np.empty(len(cells), dtype=np.float64)
    for i, (cell, line) in enumerate(zip(cells, lines, strict=True)):
        try:
            out[i] = float(cell)
        except ValueError:
            raise DataError(
                f"{where}: row {line}, time column {column!r} holds {cell!r}; expected a date "
                "(YYYY-MM-DD or YYYYMMDD) or a number"
            ) from None
        if not math.isfinite(out[i]):
            raise DataError(f"{where}: row {line}, time column {column!r} holds {cell!r}")
    return out


def _looks_like_time(cells: Sequence[str]) -> bool:
    if any(c.lower() in MISSING_TOKENS for c in cells):
        return False
    return _parse_dates(cells) is not None or all(_parse_int(c) is not None for c in cells)


def _season_of(time: np.ndarray) -> int | None:
    """Period in steps from a datetime column's median spacing (None for numeric times)."""
    if not np.issubdtype(time.dtype, np.datetime64) or len(time) < 2:
        return None
    days = float(np.median(np.diff(time).astype("timedelta64[s]").astype(np.float64))) / 86400
    for low, high, season in ((0.9, 1.1, 7), (6.5, 7.5, 52), (27.5, 31.5, 12), (89, 93, 4)):
        if low <= days <= high:
            return season
    return None


def _interpolate(
    values: np.ndarray, missing: np.ndarray, time: np.ndarray, names: Sequence[str],
    lines: Sequence[int], where: str,
) -> np.ndarray:  # fmt: skip
    """Linear interpolation in time of the interior gaps; refuses leading / trailing gaps."""
    t = time.astype("datetime64[ns]").astype(np.int64) if time.dtype.kind == "M" else time
    t = t.astype(np.float64)
    out = values.copy()
    for k, name in enumerate(names):
        gap = missing[:, k]
        if not gap.any():
            continue
        for edge, word in ((0, "leading"), (len(gap) - 1, "trailing")):
            if gap[edge]:
                raise DataError(
                    f"{where}: row {lines[edge]}, column {name!r} is missing at the "
                    f"{'start' if edge == 0 else 'end'} of the file; missing='interpolate' fills "
                    f"only interior gaps, not a {word} one (drop those rows)"
                )
        out[gap, k] = np.interp(t[gap], t[~gap], values[~gap, k])
    return out


def read_csv_series(
    path: str | Path,
    *,
    target: str | Sequence[str] | None = None,
    covariates: Sequence[str] = (),
    time_column: str | None = None,
    missing: str = "refuse",
) -> Series:
    """A :class:`Series` from a CSV file, following the rules in the module docstring."""
    path = Path(path)
    where = str(path)
    if missing not in ("refuse", "interpolate"):
        raise ConfigError(f"missing must be 'refuse' or 'interpolate', got {missing!r}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                rows.append([c.strip() for c in row])
                lines.append(reader.line_num)
    except FileNotFoundError:
        raise DataError(f"{where}: no such file; expected a CSV file with a header row") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{where}: not a readable UTF-8 CSV file ({e})") from None
    if not rows:
        raise DataError(f"{where}: the file is empty; expected a header row and at least 3 rows")
    header, body, lines = rows[0], rows[1:], lines[1:]
    if len(body) < 3:
        raise DataError(
            f"{where}: {len(body)} data row(s) after the header; a series needs at least 3"
        )
    if len(set(header)) != len(header) or any(not h for h in header):
        raise DataError(f"{where}: the header {header} has empty or repeated column names")
    for row, line in zip(body, lines, strict=True):
        if len(row) != len(header):
            raise DataError(
                f"{where}: row {line} has {len(row)} cells; the header has {len(header)}"
            )
    columns = {h: [r[i] for r in body] for i, h in enumerate(header)}

    # time column
    tcol: str | None
    if time_column is not None:
        if time_column not in columns:
            raise DataError(f"{where}: no time column {time_column!r}; the columns are {header}")
        tcol = time_column
    else:
        named = [h for h in header if h.lower() in TIME_NAMES]
        if named:
            tcol = named[0]
        elif _looks_like_time(columns[header[0]]):
            tcol = header[0]
        else:
            tcol = None
    if tcol is None:
        time = np.arange(len(body), dtype=np.int64)
    else:
        time = _parse_time(columns[tcol], lines, tcol, where)
        diff = np.diff(time)
        zero = np.flatnonzero(diff == diff.dtype.type(0))
        neg = np.flatnonzero(diff < diff.dtype.type(0))
        if len(zero) and (not len(neg) or zero[0] < neg[0]):
            i = int(zero[0])
            raise DataError(
                f"{where}: rows {lines[i]} and {lines[i + 1]} have the same time "
                f"{columns[tcol][i]!r}; timestamps must be strictly increasing"
            )
        if len(neg):
            i = int(neg[0]) + 1
            raise DataError(
                f"{where}: row {lines[i]} has time {columns[tcol][i]!r}, earlier than row "
                f"{lines[i - 1]}'s {columns[tcol][i - 1]!r}; sort the file by time"
            )

    # targets and covariates
    free = [h for h in header if h != tcol]
    if target is None:
        if not free:
            raise DataError(f"{where}: no value column besides the time column {tcol!r}")
        targets = [free[0]]
        note = f" (target {free[0]!r}: the first non-time column)"
    else:
        targets = [target] if isinstance(target, str) else list(target)
        note = ""
    covs = list(covariates)
    for name in targets + covs:
        if name not in columns or name == tcol:
            raise DataError(
                f"{where}: no value column {name!r}; the columns are {header}"
                + (f" (time column {tcol!r})" if tcol else "")
            )
    if not targets:
        raise ConfigError(f"{where}: target is empty; name at least one column")
    used = targets + covs
    if len(set(used)) != len(used):
        raise ConfigError(
            f"{where}: the targets {targets} and covariates {covs} repeat a column; name each "
            "column once"
        )

    values = np.empty((len(body), len(used)), dtype=np.float64)
    gaps = np.zeros(values.shape, dtype=bool)
    for k, name in enumerate(used):
        for i, cell in enumerate(columns[name]):
            if cell.lower() in MISSING_TOKENS:
                if missing == "refuse":
                    raise DataError(
                        f"{where}: row {lines[i]}, column {name!r} is missing ({cell!r}); fill "
                        "it or pass missing='interpolate'"
                    )
                gaps[i, k] = True
                continue
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise DataError(
                    f"{where}: row {lines[i]}, column {name!r} holds {cell!r}; expected a "
                    "finite number"
                )
            values[i, k] = v
    for k, name in enumerate(used):
        if gaps[:, k].all():
            raise DataError(f"{where}: column {name!r} has no value at all")
    if gaps.any():
        values = _interpolate(values, gaps, time, used, lines, where)
    return Series(
        name=path.stem,
        time=time,
        values=values,
        columns=used,
        targets=targets,
        covariates=covs,
        season=_season_of(time),
        source=f"{where}{note}",
    )


# ---------------------------------------------------------------------------- named series


def load_named_series(name: str) -> Series:
    """One of :data:`NAMED_SERIES`, offline from ``statsmodels.datasets``.

    * ``sunspots``: yearly mean sunspot number ``SUNACTIVITY``, 1700-2008 (309 values), int
      years, season None (its ~11-year cycle is not a fixed season; :func:`infer_season` finds it).
    * ``co2``: Mauna Loa CO2 (ppm), weekly 1958-2001 with missing weeks, turned into *monthly*
      means (``resample("MS").mean()``, as statsmodels' STL example does) and any month still
      missing linearly interpolated: column ``co2``, month starts, season 12.
    * ``nile``: yearly Nile ``volume`` at Aswan, 1871-1970 (100 values), int years, season None.
    * ``elnino``: monthly sea surface temperature, 1950-2010; the wide table (YEAR + 12 month
      columns) is melted into one column ``temperature`` at month starts, season 12.
    """
    import statsmodels.datasets as smd

    key = name.strip().lower()
    if key not in NAMED_SERIES:
        raise DataError(f"no named series {name!r}; the named series are {list(NAMED_SERIES)}")
    mod = getattr(smd, key)
    df = mod.load_pandas().data
    source = f"statsmodels.datasets.{key}"
    if key in ("sunspots", "nile"):
        tcol, vcol = ("YEAR", "SUNACTIVITY") if key == "sunspots" else ("year", "volume")
        time = df[tcol].to_numpy().astype(np.int64)
        values = df[[vcol]].to_numpy(dtype=np.float64)
        return Series(key, time, values, [vcol], [vcol], [], None, source)
    if key == "co2":
        monthly = df["co2"].resample("MS").mean().interpolate(method="linear")
        time = monthly.index.to_numpy().astype("datetime64[ns]")
        values = monthly.to_numpy(dtype=np.float64)[:, None]
        if np.isnan(values).any():  # a leading / trailing month without a week
            raise DataError(f"{source}: a month at the start or end has no weekly value")
        return Series(
            key, time, values, ["co2"], ["co2"], [], 12, f"{source} (monthly means of weeks)"
        )
    # elnino: YEAR + JAN..DEC
    months = [c for c in df.columns if c != "YEAR"]
    years = df["YEAR"].to_numpy().astype(np.int64)
    values = df[months].to_numpy(dtype=np.float64).reshape(-1, 1)  # row-major: year, month
    time = np.array(
        [np.datetime64(f"{y:04d}-{m:02d}-01", "ns") for y in years for m in range(1, 13)]
    )
    return Series(key, time, values, ["temperature"], ["temperature"], [], 12, f"{source} (melted)")


def load_series(
    spec: str | Path,
    *,
    target: str | Sequence[str] | None = None,
    covariates: Sequence[str] = (),
    time_column: str | None = None,
    missing: str = "refuse",
) -> Series:
    """A named series (case-insensitive, :data:`NAMED_SERIES`) or a ``.csv`` file.

    ``target`` / ``covariates`` / ``time_column`` / ``missing`` apply to CSV files; for a named
    series a ``target`` other than its own column and any covariate are refused."""
    text = str(spec)
    if text.strip().lower() in NAMED_SERIES:
        series = load_named_series(text)
        wanted = [target] if isinstance(target, str) else list(target or [])
        if (wanted and wanted != series.targets) or list(covariates):
            raise ConfigError(
                f"the named series {series.name!r} has the single column {series.targets}; got "
                f"target {wanted or None} and covariates {list(covariates)}"
            )
        return series
    if text.lower().endswith(".csv"):
        return read_csv_series(
            text, target=target, covariates=covariates, time_column=time_column, missing=missing
        )
    raise DataError(
        f"unknown series {text!r}; expected a .csv file or one of the named series "
        f"{list(NAMED_SERIES)}"
    )


# ---------------------------------------------------------------------------- season


def infer_season(y: np.ndarray, *, max_period: int | None = None) -> int | None:
    """The period with the strongest autocorrelation, or None.

    The series (T,) is linearly detrended; r_k = sum_t e_t e_{t+k} / sum_t e_t^2.  Among the lags
    k in [2, max_period] (default min(T // 3, 60)) that are local maxima (r_k >= r_{k-1} and
    r_k >= r_{k+1}) the one with the highest r_k is returned when r_k > 0.3."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = len(y)
    if max_period is None:
        max_period = min(n // 3, 60)
    max_period = min(int(max_period), n - 2)
    if max_period < 2 or not np.isfinite(y).all():
        return None
    t = np.arange(n, dtype=np.float64)
    e = y - np.polyval(np.polyfit(t, y, 1), t)
    denom = float(e @ e)
    if denom <= 1e-12 * max(1.0, float(y @ y)):
        return None
    r = np.array([float(e[: n - k] @ e[k:]) / denom for k in range(max_period + 2)])
    best, best_r = None, 0.3
    for k in range(2, max_period + 1):
        if r[k] >= r[k - 1] and r[k] >= r[k + 1] and r[k] > best_r:
            best, best_r = k, r[k]
    return best


# ---------------------------------------------------------------------------- split


@dataclass(frozen=True)
class Split:
    """Chronological split: train = [0, train_end), valid = [train_end, valid_end), test =
    [valid_end, length)."""

    train_end: int
    valid_end: int
    length: int

    def span(self, split: str) -> tuple[int, int]:
        """``(start, end)`` of ``"train"``, ``"valid"`` or ``"test"``."""
        spans = {
            "train": (0, self.train_end),
            "valid": (self.train_end, self.valid_end),
            "test": (self.valid_end, self.length),
        }
        if split not in spans:
            raise ConfigError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return spans[split]


def chronological_split(
    length: int,
    *,
    valid_fraction: float = 0.15,
    test_fraction: float = 0.15,
    window: int,
    horizon: int,
) -> Split:
    """train_end = round(T (1 - valid - test)), valid_end = round(T (1 - test)).

    Refused (ConfigError) when the valid or test span is shorter than ``horizon`` or the train
    span cannot hold one window of ``window`` inputs and ``horizon`` targets."""
    if window < 1 or horizon < 1:
        raise ConfigError(f"window and horizon must be >= 1, got {window} and {horizon}")
    if not (
        0 < valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1
    ):
        raise ConfigError(
            f"valid_fraction {valid_fraction} and test_fraction {test_fraction} must be in (0, 1) "
            "and sum to less than 1"
        )
    train_end = int(round(length * (1 - valid_fraction - test_fraction)))
    valid_end = int(round(length * (1 - test_fraction)))
    split = Split(train_end, valid_end, int(length))
    for name in ("valid", "test"):
        a, b = split.span(name)
        if b - a < horizon:
            raise ConfigError(
                f"the {name} span [{a}, {b}) of a {length}-step series holds {b - a} steps, fewer "
                f"than the horizon {horizon}; use a shorter horizon or a larger {name}_fraction"
            )
    if train_end < window + horizon:
        raise ConfigError(
            f"the train span [0, {train_end}) of a {length}-step series cannot hold one window of "
            f"{window} inputs + {horizon} targets; use a shorter window or horizon"
        )
    return split


def window_origins(
    split: Split, which: str, *, window: int, horizon: int, stride: int = 1
) -> np.ndarray:
    """Sorted int64 forecast origins o of span ``which`` (inputs [o-window, o), targets
    [o, o+horizon)).

    train: window and targets inside [0, train_end), i.e. window <= o <= train_end - horizon;
    valid / test: targets inside the span [a, b) and o >= window, i.e.
    max(a, window) <= o <= b - horizon (rolling origin; see the module docstring)."""
    if window < 1 or horizon < 1 or stride < 1:
        raise ConfigError(
            f"window, horizon and stride must be >= 1, got {window}, {horizon}, {stride}"
        )
    a, b = split.span(which)
    lo = window if which == "train" else max(a, window)
    hi = b - horizon
    if hi < lo:
        return np.zeros(0, dtype=np.int64)
    return np.arange(lo, hi + 1, stride, dtype=np.int64)


# ---------------------------------------------------------------------------- scaling


class Scaler:
    """Per-column standardisation z = (v - mean) / std; fit it on train rows only.

    ``mean`` and ``std`` are (K,) float64; a column with zero std gets std 1."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise DataError(
                f"scaler: mean has {self.mean.size} columns, std {self.std.size}; expected equal"
            )
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all()):
            raise DataError("scaler: mean and std must be finite")
        if (self.std <= 0).any():
            raise DataError("scaler: every std must be positive")

    @classmethod
    def fit(cls, values: np.ndarray) -> Scaler:
        """Mean and (population) std of each column of the train rows ``values`` (N, K)."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim == 1:
            v = v[:, None]
        if v.ndim != 2 or len(v) == 0:
            raise DataError(f"scaler: expected train rows (N >= 1, K), got shape {v.shape}")
        if not np.isfinite(v).all():
            raise DataError("scaler: the train rows hold NaN or Inf values")
        std = v.std(axis=0)
        return cls(v.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, v: np.ndarray) -> np.ndarray:
        """(..., K) -> (v - mean) / std."""
        return (np.asarray(v, dtype=np.float64) - self.mean) / self.std

    def inverse(self, v: np.ndarray) -> np.ndarray:
        """(..., K) -> v * std + mean."""
        return np.asarray(v, dtype=np.float64) * self.std + self.mean

    def state(self) -> dict[str, Any]:
        """JSON-able ``{"mean": [...], "std": [...]}``."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Scaler:
        """The inverse of :meth:`state`."""
        try:
            return cls(np.asarray(state["mean"], float), np.asarray(state["std"], float))
        except (KeyError, TypeError) as e:
            raise DataError(f"scaler state: expected keys 'mean' and 'std' with lists ({e})") from e
