"""Classification metrics from a confusion matrix match scikit-learn exactly, sum over batches,
and the confusion picture is a PNG."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from grukit.errors import DataError
from grukit.tasks.classify.metrics import confusion_matrix, metrics_from_confusion, plot_confusion

sk = pytest.importorskip("sklearn.metrics")


def reference(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> dict:
    """scikit-learn's values, with its defaults (labels not given) for the averages."""
    labels = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined-metric / absent-class warnings
        return {
            "accuracy": sk.accuracy_score(y_true, y_pred),
            "macro_f1": sk.f1_score(y_true, y_pred, average="macro", zero_division=0),
            "balanced_accuracy": sk.balanced_accuracy_score(y_true, y_pred),
            "recall_per_class": sk.recall_score(
                y_true, y_pred, labels=labels, average=None, zero_division=0
            ),
            "precision_per_class": sk.precision_score(
                y_true, y_pred, labels=labels, average=None, zero_division=0
            ),
            "f1_per_class": sk.f1_score(
                y_true, y_pred, labels=labels, average=None, zero_division=0
            ),
            "confusion": sk.confusion_matrix(y_true, y_pred, labels=labels),
            # without labels: the classes present in y_true or y_pred only
            "recall_present": sk.recall_score(y_true, y_pred, average=None, zero_division=0),
        }


def check(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> None:
    cm = confusion_matrix(y_true, y_pred, k)
    ref = reference(y_true, y_pred, k)
    assert cm.dtype == np.int64 and cm.shape == (k, k)
    np.testing.assert_array_equal(cm, ref["confusion"])
    got = metrics_from_confusion(cm)
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert isinstance(got[key], float)
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    for key in ("recall_per_class", "precision_per_class", "f1_per_class"):
        assert len(got[key]) == k
        np.testing.assert_allclose(got[key], ref[key], atol=1e-12, err_msg=key)
    present = np.union1d(y_true, y_pred)
    np.testing.assert_allclose(np.asarray(got["recall_per_class"])[present], ref["recall_present"])
    assert got["support"] == np.bincount(y_true, minlength=k).tolist()


def test_fixed_case_with_a_class_never_predicted_and_one_absent_from_y_true() -> None:
    # class 2 never predicted, class 3 never true (only predicted), class 4 in neither
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 3, 1, 1, 0, 1, 3])
    check(y_true, y_pred, 5)
    got = metrics_from_confusion(confusion_matrix(y_true, y_pred, 5))
    assert got["accuracy"] == pytest.approx(3 / 8)
    # F1: class 0 = 2/(2+1+2)... written out: tp0=1, fp0=1, fn0=2 -> 2/5; class 1: tp=2, fp=2,
    # fn=0 -> 4/6; classes 2, 3: 0; class 4 absent from both -> left out of the macro average
    assert got["macro_f1"] == pytest.approx((2 / 5 + 4 / 6 + 0 + 0) / 4)
    assert got["balanced_accuracy"] == pytest.approx((1 / 3 + 1 + 0) / 3)  # true classes only
    assert got["precision_per_class"][2] == 0.0 and got["recall_per_class"][3] == 0.0


def test_perfect_and_single_class() -> None:
    check(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 2]), 3)
    check(np.array([1, 1, 1]), np.array([1, 1, 1]), 3)
    check(np.array([1, 1, 1]), np.array([0, 0, 2]), 3)


@pytest.mark.parametrize("seed", range(25))
def test_random_inputs_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 9))
    n = int(rng.integers(1, 60))
    # skewed class probabilities so that some classes are often absent from one side
    p_true = rng.dirichlet(np.full(k, 0.5))
    p_pred = rng.dirichlet(np.full(k, 0.5))
    y_true = rng.choice(k, size=n, p=p_true)
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.choice(k, size=n, p=p_pred))
    check(y_true, y_pred, k)


def test_confusion_sums_over_batches_and_takes_tensors() -> None:
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 100), rng.integers(0, 4, 100)
    whole = confusion_matrix(y_true, y_pred, 4)
    parts = sum(
        confusion_matrix(torch.as_tensor(y_true[i : i + 7]), torch.as_tensor(y_pred[i : i + 7]), 4)
        for i in range(0, 100, 7)
    )
    np.testing.assert_array_equal(parts, whole)
    assert metrics_from_confusion(parts) == metrics_from_confusion(whole)
    assert (
        metrics_from_confusion(parts.tolist())["accuracy"]
        == metrics_from_confusion(whole)["accuracy"]
    )


def test_confusion_refuses_bad_input() -> None:
    with pytest.raises(DataError, match=r"y_pred holds class index 3; expected 0\.\.2"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(DataError, match="y_true has 2 cases but y_pred has 1"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(DataError, match="integer class indices"):
        confusion_matrix(np.array([0.5]), np.array([0]), 3)
    with pytest.raises(DataError, match="square"):
        metrics_from_confusion(np.zeros((2, 3)))


def test_empty_confusion_gives_zeros() -> None:
    got = metrics_from_confusion(np.zeros((3, 3), np.int64))
    assert got["accuracy"] == got["macro_f1"] == got["balanced_accuracy"] == 0.0


def test_plot_confusion_writes_a_png(tmp_path: Path) -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 4)
    path = tmp_path / "confusion.png"
    plot_confusion(cm, ["a", "b", "c", "d"], path, title="toy")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]  # no temporary file left
    with pytest.raises(DataError, match=r"expected a \(3, 3\) matrix for 3 classes"):
        plot_confusion(cm, ["a", "b", "c"], tmp_path / "x.png")
