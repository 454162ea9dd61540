"""Classic forecasts from every origin, using only the history before it.

Every baseline maps ``(y, origins, horizon)`` to forecasts ``(n_origins, horizon)`` for a
univariate ``y`` (T,), or ``(n_origins, horizon, K)`` for ``y`` (T, K) (each column on its own);
the forecast from origin ``o`` of step ``o + h`` (h = 0..H-1) reads ``y[:o]`` only.

* ``naive``: y[o-1].
* ``seasonal_naive``: y[o + h - m ceil((h+1)/m)] (the last value of the same season).
* ``ets``: statsmodels' ``ETSModel`` with additive errors, an additive damped trend and, when
  ``season`` is set, an additive season; parameters (smoothing, damping, initial states) are
  fitted once on ``y[:train_end]`` by maximum likelihood.  The fitted recursions are then run
  over the whole series with those parameters (``ETSModel(y).smooth(params)``); the filter is
  causal, so its state after ``y[o-1]`` is the state of a model re-filtered on ``y[:o]``, and
  the forecast is l_{o-1} + (phi + ... + phi^{h+1}) b_{o-1} + s_{o+h-m ceil((h+1)/m)}.
* ``arima``: statsmodels ``SARIMAX``.  The seasonal part (only with 2 <= season <= 24 and a
  train span of at least 3 seasons) is (0,1,1)_m when the STL seasonal strength of the train
  span is above 0.64 (Wang, Smith & Hyndman 2006, as in auto.arima), else (1,0,0)_m; d in {0, 1}
  by a KPSS test (5 %) on the (seasonally differenced) train span; (p, q) in 0..3 x 0..2 by the
  AIC of a conditional-sum-of-squares fit of the multiplicative ARMA to the differenced train
  span (as auto.arima's ``approximation``; every candidate is scored on the same residuals);
  a constant when nothing is differenced.  The chosen model's parameters are then fitted once
  on the train span by exact maximum likelihood (scale concentrated out); the Kalman filter is
  run once over the whole series (``results.apply(y)``) and its one-step-ahead state at ``o``
  (the final state of ``results.apply(y[:o])``, the filter being causal) is propagated
  ``horizon`` steps.

statsmodels' convergence and start-parameter warnings are silenced and counted (``notes``);
BLAS is limited to one thread during the fits (much faster for these small problems).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from grukit.errors import DataError
from grukit.tasks.forecast.data import infer_season

__all__ = ["BASELINES", "arima", "ets", "naive", "run_baselines", "seasonal_naive"]


# ---------------------------------------------------------------------------- helpers


def _prepare(y: np.ndarray, origins: np.ndarray, horizon: int, need: int, name: str):
    """(T, K) float64 y, int64 origins; refuses NaN and origins with fewer than ``need`` steps
    of history or beyond the series."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim not in (1, 2):
        raise DataError(f"{name}: expected y of shape (T,) or (T, K), got {y.shape}")
    origins = np.asarray(origins, dtype=np.int64).reshape(-1)
    if horizon < 1:
        raise DataError(f"{name}: the horizon must be >= 1, got {horizon}")
    if not np.isfinite(y).all():
        raise DataError(f"{name}: the series holds NaN or Inf values")
    if len(origins) and (origins.min() < need or origins.max() > len(y)):
        raise DataError(
            f"{name}: origins must lie in [{need}, {len(y)}] (at least {need} steps of history), "
            f"got [{origins.min()}, {origins.max()}]"
        )
    return y, origins


def _per_column(
    fn: Callable[[np.ndarray], np.ndarray], y: np.ndarray
) -> np.ndarray:  # (N, H) or (N, H, K)
    if y.ndim == 1:
        return fn(y)
    return np.stack([fn(y[:, k]) for k in range(y.shape[1])], axis=-1)


def _seasonal_index(origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """(N, H) indices o + h - m ceil((h+1)/m): the last observed step of the same season."""
    h = np.arange(horizon)
    back = season * np.ceil((h + 1) / season).astype(np.int64)
    return origins[:, None] + (h - back)[None, :]


@contextlib.contextmanager
def _quiet(counter: dict[str, Any] | None = None) -> Iterator[None]:
    """Silence statsmodels' convergence / start-parameter warnings (counted in ``counter``) and
    limit BLAS to one thread."""
    try:
        from threadpoolctl import threadpool_limits

        limits: Any = threadpool_limits(1)
    except Exception:  # threadpoolctl is optional
        limits = contextlib.nullcontext()
    with limits, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if counter is not None:
        counter["warnings"] = counter.get("warnings", 0) + len(caught)


# ---------------------------------------------------------------------------- simple


def naive(y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """ŷ_{o+h} = y_{o-1} for h = 0..H-1: (N, H) or (N, H, K)."""
    y, origins = _prepare(y, origins, horizon, 1, "naive")
    out = y[origins - 1]  # (N,) or (N, K)
    return np.repeat(out[:, None], horizon, axis=1)


def seasonal_naive(y: np.ndarray, origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """ŷ_{o+h} = y[o + h - m ceil((h+1)/m)] with m = ``season``: (N, H) or (N, H, K)."""
    if season is None or int(season) < 1:
        raise DataError(f"seasonal_naive: the season must be >= 1, got {season}")
    season = int(season)
    y, origins = _prepare(y, origins, horizon, season, "seasonal_naive")
    return y[_seasonal_index(origins, horizon, season)]


# ---------------------------------------------------------------------------- ETS


def _ets_spec(season: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"error": "add", "trend": "add", "damped_trend": True}
    if season:
        spec.update(seasonal="add", seasonal_periods=int(season))
    return spec


def _ets_fit(y_train: np.ndarray, season: int | None, counter: dict[str, Any] | None = None):
    """The ETSModel results fitted on ``y_train`` (T,)."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    try:
        with _quiet(counter):
            res = ETSModel(y_train, **_ets_spec(season)).fit(disp=False)
    except Exception as e:
        raise DataError(f"ets: the fit on the train span failed ({type(e).__name__}: {e})") from e
    if not np.isfinite(res.params).all():
        raise DataError("ets: the fit on the train span gave non-finite parameters")
    return res


def _ets_one(y, origins, horizon, train_end, season, counter=None) -> np.ndarray:
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    res = _ets_fit(y[:train_end], season, counter)
    try:
        with _quiet(counter):
            states = np.asarray(ETSModel(y, **_ets_spec(season)).smooth(res.params).states)
    except Exception as e:
        raise DataError(f"ets: filtering the series failed ({type(e).__name__}: {e})") from e
    names = list(res.model.param_names)
    phi = float(res.params[names.index("damping_trend")])
    damp = np.cumsum(phi ** np.arange(1, horizon + 1))  # phi + ... + phi^{h+1}
    last = origins - 1  # states[t] is the state after y[t]
    out = states[last, 0][:, None] + damp[None, :] * states[last, 1][:, None]
    if season:
        out = out + states[_seasonal_index(origins, horizon, int(season)), 2]
    return out


def ets(
    y: np.ndarray,
    origins: np.ndarray,
    horizon: int,
    *,
    train_end: int,
    season: int | None,
    notes: list[str] | None = None,
) -> np.ndarray:
    """ETS(A, Ad, A) (or ETS(A, Ad, N) without a season), fitted once on y[:train_end],
    forecasts from every origin using y[:o]: (N, H) or (N, H, K)."""
    season = int(season) if season and int(season) >= 2 else None
    y, origins = _prepare(y, origins, horizon, max(1, season or 1), "ets")
    minimum = 2 * (season or 0) + 6
    if train_end < minimum or train_end > len(y):
        raise DataError(
            f"ets: the train span of {train_end} steps is too short (needs {minimum}) or longer "
            f"than the series ({len(y)})"
        )
    counter: dict[str, Any] = {}
    out = _per_column(lambda c: _ets_one(c, origins, horizon, train_end, season, counter), y)
    if notes is not None and counter.get("warnings"):
        notes.append(f"ets: {counter['warnings']} statsmodels warning(s) silenced")
    return out


# ---------------------------------------------------------------------------- ARIMA


def _difference(y: np.ndarray, d: int, D: int, season: int | None) -> np.ndarray:
    z = y
    if D:
        z = z[season:] - z[:-season]
    for _ in range(d):
        z = np.diff(z)
    return z


def _seasonal_strength(y: np.ndarray, season: int) -> float:
    """max(0, 1 - var(R) / var(S + R)) of an STL decomposition."""
    from statsmodels.tsa.seasonal import STL

    fit = STL(y, period=season, robust=True).fit()
    denom = float(np.var(fit.seasonal + fit.resid))
    return 0.0 if denom <= 0 else max(0.0, 1.0 - float(np.var(fit.resid)) / denom)


def _kpss_needs_difference(z: np.ndarray) -> bool:
    from statsmodels.tsa.stattools import kpss

    if len(z) < 10 or np.ptp(z) == 0:
        return False
    _, pvalue, *_ = kpss(z, regression="c", nlags="auto")
    return bool(pvalue < 0.05)


def _css_aic(
    z: np.ndarray, p: int, q: int, P: int, Q: int, m: int, *, const: bool, skip: int
) -> float:
    """AIC of a conditional-sum-of-squares fit of the multiplicative ARMA(p, q)(P, Q)_m to z:
    e = [phi(B) Phi(B^m) / (theta(B) Theta(B^m))] (z - mu), AIC = n log(SSE / n) + 2 (k + 1)."""
    from scipy.optimize import least_squares
    from scipy.signal import lfilter

    k = int(const) + p + q + P + Q

    def residuals(x: np.ndarray) -> np.ndarray:
        i = 0
        mu = x[i] if const else 0.0
        i += int(const)
        ar = np.r_[1.0, -x[i : i + p]]
        i += p
        ma = np.r_[1.0, x[i : i + q]]
        i += q
        sar, sma = np.ones(1), np.ones(1)
        if P:
            sar = np.zeros(P * m + 1)
            sar[0] = 1.0
            sar[m::m] = -x[i : i + P]
        i += P
        if Q:
            sma = np.zeros(Q * m + 1)
            sma[0] = 1.0
            sma[m::m] = x[i : i + Q]
        with np.errstate(all="ignore"):
            e = lfilter(np.convolve(ar, sar), np.convolve(ma, sma), z - mu)[skip:]
        return np.clip(np.nan_to_num(e, nan=1e10), -1e10, 1e10)

    x0 = np.zeros(k)
    if const:
        x0[0] = float(np.mean(z))
    try:
        x = least_squares(residuals, x0, method="trf", max_nfev=200).x if k else x0
    except (ValueError, np.linalg.LinAlgError):
        return math.inf
    e = residuals(x)
    sse = float(e @ e)
    if not np.isfinite(sse) or sse <= 0:
        return math.inf
    return len(e) * math.log(sse / len(e)) + 2 * (k + 1)


def choose_arima_order(
    y_train: np.ndarray, season: int | None, counter: dict[str, Any] | None = None
) -> tuple[tuple[int, int, int], tuple[int, int, int, int]]:
    """``(order, seasonal_order)`` for the train span (T,), see the module docstring."""

    seasonal = bool(season and 2 <= season <= 24 and len(y_train) >= 3 * season + 10)
    with _quiet(counter):
        D = int(seasonal and _seasonal_strength(y_train, int(season)) > 0.64)  # type: ignore[arg-type]
        d = int(_kpss_needs_difference(_difference(y_train, 0, D, season)))
    seasonal_order = (0, 0, 0, 0)
    if seasonal:
        seasonal_order = (0, 1, 1, int(season)) if D else (1, 0, 0, int(season))  # type: ignore[arg-type]
    z = _difference(y_train, d, D, season)
    P, _, Q, m = seasonal_order
    skip = 3 + P * m  # the same residuals for every candidate, so their AICs compare
    if len(z) < skip + 10:
        raise DataError(f"arima: the train span ({len(y_train)} steps) is too short to choose")
    best: tuple[float, tuple[int, int, int]] | None = None
    for p in range(4):
        for q in range(3):
            with _quiet(counter):
                aic = _css_aic(z, p, q, P, Q, m, const=d + D == 0, skip=skip)
            if np.isfinite(aic) and (best is None or aic < best[0]):
                best = (aic, (p, d, q))
    if best is None:
        raise DataError("arima: no candidate order could be fitted on the train span")
    return best[1], seasonal_order


def _arima_one(y, origins, horizon, train_end, season, order, counter) -> np.ndarray:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    y_train = y[:train_end]
    try:
        if order is None:
            order, seasonal_order = choose_arima_order(y_train, season, counter)
        else:
            order = tuple(order)
            seasonal_order = (0, 0, 0, 0)
            if len(order) == 2:
                order, seasonal_order = tuple(order[0]), tuple(order[1])
        trend = "c" if order[1] + seasonal_order[1] == 0 else "n"
        with _quiet(counter):
            res = SARIMAX(
                y_train, order=order, seasonal_order=seasonal_order, trend=trend,
                concentrate_scale=True,
            ).fit(disp=False, maxiter=200, cov_type="none")  # fmt: skip
            full = res.apply(y)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"arima: the fit on the train span failed ({type(e).__name__}: {e})") from e
    ssm = full.model.ssm

    def matrix(key: str, ndim: int) -> np.ndarray:  # time-invariant system matrices
        m = np.asarray(ssm[key], dtype=np.float64)
        return m[..., 0] if m.ndim > ndim else m

    Z = matrix("design", 2)[0]  # (k,)
    d0 = float(matrix("obs_intercept", 1)[0])
    T = matrix("transition", 2)  # (k, k)
    c = matrix("state_intercept", 1)  # (k,)
    a = np.asarray(full.predicted_state)[:, origins]  # (k, N): E[state_o | y[:o]]
    out = np.empty((len(origins), horizon))
    for h in range(horizon):
        out[:, h] = Z @ a + d0
        a = T @ a + c[:, None]
    if not np.isfinite(out).all():
        raise DataError(f"arima: order {order} x {seasonal_order} gave non-finite forecasts")
    counter["order"] = (order, seasonal_order)  # type: ignore[assignment]
    return out


def arima(
    y: np.ndarray,
    origins: np.ndarray,
    horizon: int,
    *,
    train_end: int,
    season: int | None,
    order: Any = None,
    notes: list[str] | None = None,
) -> np.ndarray:
    """SARIMAX with an order chosen on y[:train_end] (or ``order`` = (p, d, q) or
    ((p, d, q), (P, D, Q, m))), parameters fitted once on the train span, forecasts from every
    origin using y[:o]: (N, H) or (N, H, K)."""
    season = int(season) if season and int(season) >= 2 else None
    y, origins = _prepare(y, origins, horizon, 1, "arima")
    if train_end < 10 or train_end > len(y):
        raise DataError(
            f"arima: the train span of {train_end} steps is too short (needs 10) or longer than "
            f"the series ({len(y)})"
        )
    counter: dict[str, Any] = {}
    out = _per_column(
        lambda col: _arima_one(col, origins, horizon, train_end, season, order, counter), y
    )
    if notes is not None:
        o, so = counter["order"]  # type: ignore[misc]
        notes.append(f"arima: order {o} x seasonal {so}")
        if counter.get("warnings"):
            notes.append(f"arima: {counter['warnings']} statsmodels warning(s) silenced")
    return out


# ---------------------------------------------------------------------------- registry


def _naive_baseline(y, origins, horizon, *, train_end, season, notes=None):
    return naive(y, origins, horizon)


def _seasonal_naive_baseline(y, origins, horizon, *, train_end, season, notes=None):
    """seasonal_naive with ``season``, else the season inferred on the train span, else naive."""
    m = int(season) if season else None
    if m is None:
        train = np.asarray(y, dtype=np.float64)[:train_end]
        m = infer_season(train if train.ndim == 1 else train[:, 0])
        if m is not None and notes is not None:
            notes.append(f"seasonal_naive: season {m} inferred on the train span")
    if m is None or m < 2:
        if notes is not None:
            notes.append("seasonal_naive: no season known or found; it is the naive forecast")
        return naive(y, origins, horizon)
    return seasonal_naive(y, origins, horizon, m)


def _ets_baseline(y, origins, horizon, *, train_end, season, notes=None):
    return ets(y, origins, horizon, train_end=train_end, season=season, notes=notes)


def _arima_baseline(y, origins, horizon, *, train_end, season, notes=None):
    return arima(y, origins, horizon, train_end=train_end, season=season, notes=notes)


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "naive": _naive_baseline,
    "seasonal_naive": _seasonal_naive_baseline,
    "ets": _ets_baseline,
    "arima": _arima_baseline,
}


def run_baselines(
    y: np.ndarray,
    origins: np.ndarray,
    horizon: int,
    *,
    train_end: int,
    season: int | None,
    notes: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """All of :data:`BASELINES` on the same origins: name -> (N, H) (or (N, H, K)) forecasts.

    ``notes``, when given, receives one line per choice made (inferred season, the naive fallback
    of seasonal_naive, the ARIMA order, silenced warnings)."""
    return {
        name: fn(y, origins, horizon, train_end=train_end, season=season, notes=notes)
        for name, fn in BASELINES.items()
    }
