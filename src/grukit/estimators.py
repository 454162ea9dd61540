"""scikit-learn style estimators over the task code: ``GRUClassifier`` and ``GRUForecaster``.

They build the same :class:`~grukit.tasks.classify.task.ClassifyTask` /
:class:`~grukit.tasks.forecast.task.ForecastTask` from arrays in memory and train them with the
same :class:`~grukit.train.Trainer` (no second training loop), in a temporary run folder that is
removed after ``fit`` unless ``out`` names one. ``get_params`` / ``set_params`` follow
scikit-learn's convention (constructor arguments stored as attributes, nothing else done in
``__init__``), so ``sklearn.base.clone`` works without grukit importing scikit-learn. The in-cell
options of a run config's ``[cell]`` section (``recurrent_dropout``, ``candidate_dropout``,
``zoneout``, ``layer_norm``, ``weight_drop``) are constructor arguments too.

>>> clf = GRUClassifier(hidden_size=32, epochs=20)               # doctest: +SKIP
>>> clf.fit(X_train, y_train).score(X_test, y_test)             # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grukit.errors import DataError

__all__ = ["GRUClassifier", "GRUForecaster"]


def _store(estimator: Any, arguments: dict[str, Any]) -> None:
    """Keep every constructor argument as an attribute of the same name, unchanged (the
    scikit-learn rule that makes ``get_params`` and ``clone`` work)."""
    for name, value in arguments.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


class _Params:
    """``get_params`` / ``set_params`` from the constructor's signature (sklearn's rule)."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [n for n, p in sig.parameters.items() if n != "self" and p.kind == p.KEYWORD_ONLY]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Any:
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"{type(self).__name__}: invalid parameter {name!r}; valid: {', '.join(valid)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {
            n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items()
        }
        shown = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults.get(k)]
        return f"{type(self).__name__}({', '.join(shown)})"

    def _config(self, task: str, options: dict[str, Any]) -> Any:
        from grukit.runconfig import make_config

        return make_config(
            task=task, variant=self.variant, hidden_size=self.hidden_size,
            num_layers=self.num_layers, bidirectional=self.bidirectional, dropout=self.dropout,
            backend=self.backend, lr=self.lr, batch_size=self.batch_size, epochs=self.epochs,
            patience=self.patience, seed=self.seed, device=self.device,
            recurrent_dropout=self.recurrent_dropout, candidate_dropout=self.candidate_dropout,
            zoneout=self.zoneout, layer_norm=self.layer_norm, weight_drop=self.weight_drop,
            progress=False, **options,
        )  # fmt: skip

    def _train(self, config: Any, task: Any) -> Any:
        from grukit.train import Trainer

        folder = Path(self.out) if self.out else Path(tempfile.mkdtemp(prefix="grukit-fit-"))
        run = folder if self.out else folder / "run"
        try:
            trainer = Trainer(
                config.replace(**{"run.out": str(run)}), task=task,
                log=print if self.verbose else (lambda s: None),
            )  # fmt: skip
            self.result_ = trainer.fit()
        finally:
            if not self.out:
                shutil.rmtree(folder, ignore_errors=True)
        self.model_ = trainer.averaged.eval()
        self.task_ = task
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit first")


def _as_sequences(X: Any, lengths: Sequence[int] | None, what: str = "X") -> list[np.ndarray]:
    """A list of ``(T_i, C)`` float32 arrays from a list of arrays or a padded
    ``(N, T, C)`` / ``(N, T)`` array with optional ``lengths``."""
    if isinstance(X, np.ndarray) and X.dtype != object:
        arr = X[..., None] if X.ndim == 2 else X
        if arr.ndim != 3:
            raise DataError(f"{what}: expected (N, T, C) or (N, T), got shape {X.shape}")
        if lengths is None:
            lengths = [arr.shape[1]] * arr.shape[0]
        if len(lengths) != arr.shape[0]:
            raise DataError(f"lengths: expected {arr.shape[0]} values, got {len(lengths)}")
        xs = []
        for i, n in enumerate(lengths):
            if not 1 <= int(n) <= arr.shape[1]:
                raise DataError(f"lengths[{i}] = {n} is outside [1, {arr.shape[1]}]")
            xs.append(np.asarray(arr[i, : int(n)], dtype=np.float32))
    else:
        if lengths is not None:
            raise DataError("lengths go with a padded array, not a list of sequences")
        xs = [np.asarray(x, dtype=np.float32) for x in X]
        xs = [x[:, None] if x.ndim == 1 else x for x in xs]
    if not xs:
        raise DataError(f"{what} holds no sequences")
    for i, x in enumerate(xs):
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != xs[0].shape[1]:
            raise DataError(
                f"{what}[{i}]: expected shape (T, {xs[0].shape[1]}) with T >= 1, got {x.shape}"
            )
        if not np.isfinite(x).all():
            raise DataError(f"{what}[{i}] holds NaN or infinite values")
    return xs


class GRUClassifier(_Params):
    """Sequence classifier: any grukit variant, the head of the ``classify`` task.

    ``fit(X, y)``: ``X`` a list of ``(T_i, C)`` arrays (or ``(N, T, C)`` padded with
    ``lengths``), ``y`` labels of any type; ``valid_fraction`` of it, stratified, watches
    early stopping. ``predict``, ``predict_proba`` ``(N, K)`` in the order of ``classes_``,
    ``score`` (accuracy).
    """

    def __init__(
        self,
        *,
        variant: str = "gru",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        pooling: str = "last",
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        candidate_dropout: float = 0.0,
        zoneout: float = 0.0,
        layer_norm: bool = False,
        weight_drop: float = 0.0,
        lr: float = 3e-3,
        batch_size: int = 16,
        epochs: int = 60,
        patience: int = 20,
        valid_fraction: float = 0.2,
        class_weights: str = "none",
        standardise: bool = True,
        seed: int = 0,
        backend: str = "auto",
        device: str = "cpu",
        out: str | None = None,
        verbose: bool = False,
    ) -> None:
        _store(self, locals())

    def fit(self, X: Any, y: Any, lengths: Sequence[int] | None = None) -> GRUClassifier:
        from grukit.tasks.classify.data import ClassificationData, SequenceSet
        from grukit.tasks.classify.task import ClassifyTask

        xs = _as_sequences(X, lengths)
        y = np.asarray(y)
        if y.shape != (len(xs),):
            raise DataError(f"y: expected {len(xs)} labels, got shape {y.shape}")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise DataError(f"y holds one class ({self.classes_[0]!r}); need two or more")
        self.n_features_in_ = xs[0].shape[1]
        train = SequenceSet(xs, codes.astype(np.int64))
        data = ClassificationData(
            name="fit", classes=[str(c) for c in self.classes_], train=train, test=train,
            source="arrays given to GRUClassifier.fit",
        )  # fmt: skip
        config = self._config(
            "classify",
            {"pooling": self.pooling, "valid_fraction": self.valid_fraction,
             "split_seed": self.seed, "class_weights": self.class_weights,
             "standardise": self.standardise},
        )  # fmt: skip
        return self._train(config, ClassifyTask(data, config.task))

    def predict_proba(self, X: Any, lengths: Sequence[int] | None = None) -> np.ndarray:
        self._check_fitted()
        return self.task_.predict_proba(self.model_, _as_sequences(X, lengths)).numpy()

    def predict(self, X: Any, lengths: Sequence[int] | None = None) -> np.ndarray:
        proba = self.predict_proba(X, lengths)
        return self.classes_[proba.argmax(1)]

    def score(self, X: Any, y: Any, lengths: Sequence[int] | None = None) -> float:
        """Accuracy of :meth:`predict` against ``y``."""
        return float(np.mean(self.predict(X, lengths) == np.asarray(y)))


class GRUForecaster(_Params):
    """Multi-step forecaster: the ``forecast`` task's GRU encoder and direct head.

    ``fit(y, X=None)``: ``y`` ``(T,)`` or ``(T, k)`` targets, ``X`` ``(T, m)`` covariates; the
    last ``valid_fraction`` of the series (in time) watches early stopping. ``predict(horizon)``
    forecasts ``horizon`` steps past the end of the fitted series: ``(horizon,)`` or
    ``(horizon, k)``.
    """

    def __init__(
        self,
        *,
        window: int = 32,
        horizon: int = 12,
        season: int = 0,
        variant: str = "gru",
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        candidate_dropout: float = 0.0,
        zoneout: float = 0.0,
        layer_norm: bool = False,
        weight_drop: float = 0.0,
        decoder: str = "direct",
        lr: float = 3e-3,
        batch_size: int = 16,
        epochs: int = 200,
        patience: int = 30,
        valid_fraction: float = 0.15,
        seed: int = 0,
        backend: str = "auto",
        device: str = "cpu",
        out: str | None = None,
        verbose: bool = False,
    ) -> None:
        _store(self, locals())

    def _series(self, y: Any, X: Any) -> Any:
        from grukit.tasks.forecast.data import Series

        y = np.asarray(y, dtype=np.float64)
        y2 = y[:, None] if y.ndim == 1 else y
        cov = np.zeros((len(y2), 0)) if X is None else np.asarray(X, dtype=np.float64)
        cov = cov[:, None] if cov.ndim == 1 else cov
        if y2.ndim != 2 or cov.ndim != 2 or len(cov) != len(y2):
            raise DataError(
                f"y: expected (T,) or (T, k) and X (T, m) with the same T, got {y.shape} and "
                f"{None if X is None else np.shape(X)}"
            )
        if not (np.isfinite(y2).all() and np.isfinite(cov).all()):
            raise DataError("y or X holds NaN or infinite values")
        targets = [f"y{k}" for k in range(y2.shape[1])]
        covariates = [f"x{k}" for k in range(cov.shape[1])]
        return Series(
            name="fit", time=np.arange(len(y2)), values=np.concatenate([y2, cov], axis=1),
            columns=targets + covariates, targets=targets, covariates=covariates,
            season=self.season or None, source="arrays given to GRUForecaster.fit",
        )  # fmt: skip

    def fit(self, y: Any, X: Any = None) -> GRUForecaster:
        from grukit.tasks.forecast.task import ForecastTask

        series = self._series(y, X)
        config = self._config(
            "forecast",
            {"window": self.window, "horizon": self.horizon, "season": self.season,
             "decoder": self.decoder, "valid_fraction": self.valid_fraction,
             "test_fraction": self.valid_fraction, "baselines": False},
        )  # fmt: skip
        self.series_ = series
        self._ndim = np.ndim(y)
        return self._train(config, ForecastTask(series, config.task))

    def predict(self, horizon: int | None = None) -> np.ndarray:
        """Forecasts past the end of the fitted series (``horizon`` default: the model's)."""
        self._check_fitted()
        future = self.task_.forecast_future(self.model_, self.series_, horizon or self.horizon)
        return future[:, 0] if self._ndim == 1 else future
