"""The classification task end to end: the head reads the last *valid* state, bidirectional
heads read the reverse direction at step 1, the CLI trains / evaluates / predicts on tiny
``.ts`` files, resume is exact, and the scikit-learn style estimator reuses the task."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from grukit.cli import main
from grukit.models import SequenceClassifier
from grukit.runconfig import ModelConfig, make_config
from grukit.train import Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_ts(path: Path, cases: list[tuple[np.ndarray, str]], labels: list[str]) -> Path:
    """A multivariate, variable-length ``.ts`` file of ``(T_i, C)`` cases."""
    channels = cases[0][0].shape[1]
    lines = [
        "@problemName tiny", "@timeStamps false", "@missing false", "@univariate false",
        f"@dimensions {channels}", "@equalLength false",
        "@classLabel true " + " ".join(labels), "@data",
    ]  # fmt: skip
    for x, label in cases:
        dims = [",".join(f"{v:.5f}" for v in x[:, c]) for c in range(channels)]
        lines.append(":".join(dims) + ":" + label)
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_cases(n: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """Rising first channel -> 'up', falling -> 'down'; 5-12 steps, 2 channels."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        steps = int(rng.integers(5, 13))
        slope = 1.0 if i % 2 == 0 else -1.0
        x = np.stack([slope * np.linspace(0, 1, steps), rng.normal(size=steps)], axis=1)
        cases.append((x + 0.05 * rng.normal(size=x.shape), "up" if slope > 0 else "down"))
    return cases


@pytest.fixture(scope="module")
def tiny_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ts")
    write_ts(folder / "Tiny_TEST.ts", tiny_cases(16, 1), ["up", "down"])
    return write_ts(folder / "Tiny_TRAIN.ts", tiny_cases(40, 0), ["up", "down"])


def quiet(_: str) -> None:
    pass


def config(data: Path, out: Path, **extra: Any) -> Any:
    values: dict[str, Any] = dict(
        task="classify", data=str(data), hidden_size=8, epochs=3, lr=0.02, batch_size=8,
        seed=0, out=str(out), progress=False,
    )  # fmt: skip
    values.update(extra)
    return make_config(**values)


# ---------------------------------------------------------------------------- the head


@pytest.mark.parametrize("variant", ["gru", "mgu", "mingru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_last_state_is_that_of_the_last_valid_step(variant: str, bidirectional: bool) -> None:
    """Each sequence alone (no padding) and the packed batch give the same features: the
    forward part is the output at the sequence's own last step, the reverse part the output
    at step 1. Padding read as data would change both."""
    torch.manual_seed(0)
    cfg = ModelConfig(variant=variant, hidden_size=5, num_layers=2, bidirectional=bidirectional)
    model = SequenceClassifier(3, 4, cfg).double().eval()
    seqs = [torch.randn(t, 3, dtype=torch.float64) for t in (7, 2, 5)]
    batch = model.features(pack_sequence(seqs, enforce_sorted=False))
    for i, s in enumerate(seqs):
        out, _ = model.rnn(s[:, None, :])  # (T, 1, D*H): the top layer's outputs
        torch.testing.assert_close(batch[i], model.features(pack_sequence([s]))[0])
        torch.testing.assert_close(batch[i, :5], out[-1, 0, :5], rtol=1e-10, atol=1e-10)
        if bidirectional:
            torch.testing.assert_close(batch[i, 5:], out[0, 0, 5:], rtol=1e-10, atol=1e-10)
    padded = torch.nn.utils.rnn.pad_sequence(seqs)  # zeros after each sequence's end
    out, _ = model.rnn(padded)
    assert not torch.allclose(batch[1, :5], out[-1, 1, :5]), "padding did not matter: weak test"


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_pooling_counts_valid_steps_only(pooling: str) -> None:
    torch.manual_seed(1)
    model = SequenceClassifier(2, 3, ModelConfig(hidden_size=4), pooling).double().eval()
    seqs = [torch.randn(t, 2, dtype=torch.float64) for t in (6, 3)]
    batch = model.features(pack_sequence(seqs, enforce_sorted=False))
    for i, s in enumerate(seqs):
        out, _ = model.rnn(s[:, None, :])
        expect = out[:, 0].mean(0) if pooling == "mean" else out[:, 0].amax(0)
        torch.testing.assert_close(batch[i], expect, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- end to end


def test_cli_train_eval_predict(tiny_ts: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    status = main([
        "train", "--task", "classify", "--data", str(tiny_ts), "--hidden-size", "8",
        "--epochs", "4", "--lr", "0.03", "--out", str(run), "--no-progress",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "accuracy:" in out and "macro_f1:" in out
    final = json.loads((run / "final.json").read_text())
    assert final["monitor"] == "accuracy" and final["mode"] == "max"
    for split, n in (("train", 32), ("valid", 8), ("test", 16)):
        assert final[split]["count"] == n, "the stratified 20% valid split is carved from train"
        assert sum(map(sum, final[split]["confusion"])) == n
    assert (run / "confusion.png").read_bytes()[:4] == b"\x89PNG"

    assert main(["eval", str(run), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "recall_per_class", "cross_entropy"):
        assert key in result, key
    assert result["accuracy"] == final["test"]["accuracy"]

    test_file = tiny_ts.with_name("Tiny_TEST.ts")
    target = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--data", str(test_file), "--out", str(target)]) == 0
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 16 and set(rows[0]) == {"case", "predicted", "true", "p_up", "p_down"}
    accuracy = np.mean([r["predicted"] == r["true"] for r in rows])
    assert accuracy == pytest.approx(final["test"]["accuracy"])
    assert all(abs(float(r["p_up"]) + float(r["p_down"]) - 1) < 1e-5 for r in rows)
    # never overwrites a file it did not write
    assert main(["predict", str(run), "--data", str(test_file), "--out", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_resume_of_a_classification_run_is_exact(tiny_ts: Path, tmp_path: Path) -> None:
    Trainer(config(tiny_ts, tmp_path / "straight", epochs=4), log=quiet).fit()
    Trainer(config(tiny_ts, tmp_path / "resumed", epochs=2), log=quiet).fit()
    Trainer.resume(tmp_path / "resumed", overrides={"epochs": 4}, log=quiet).fit()

    def numbers(run: Path) -> list[dict[str, Any]]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        drop = ("seconds", "seq_per_s", "elapsed_s")
        return [{k: v for k, v in r.items() if k not in drop} for r in rows]

    assert numbers(tmp_path / "resumed") == numbers(tmp_path / "straight")
    a = json.loads((tmp_path / "resumed" / "final.json").read_text())
    b = json.loads((tmp_path / "straight" / "final.json").read_text())
    assert a["test"] == b["test"]


def test_a_bidirectional_deep_mean_pooled_run(tiny_ts: Path, tmp_path: Path) -> None:
    cfg = config(tiny_ts, tmp_path / "run", bidirectional=True, num_layers=2, pooling="mean",
                 variant="mgu", class_weights="balanced")  # fmt: skip
    result = Trainer(cfg, log=quiet).fit()
    assert 0 <= result["test"]["accuracy"] <= 1


def test_a_task_option_of_another_task_is_refused(tiny_ts: Path, tmp_path: Path, capsys) -> None:
    status = main(["train", "--task", "classify", "--data", str(tiny_ts), "--horizon", "3",
                   "--out", str(tmp_path / "run"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "task.horizon" in err and "classify" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(
    not (SHARED / "classification").is_dir(), reason="../shared/data/classification is absent"
)
def test_japanese_vowels_from_the_shared_folder_trains(tmp_path: Path) -> None:
    cfg = config(SHARED / "classification" / "JapaneseVowels_TRAIN.ts", tmp_path / "run",
                 epochs=1, hidden_size=16)  # fmt: skip
    result = Trainer(cfg, log=quiet).fit()
    assert result["test"]["count"] == 370 and result["train"]["count"] == 216
    assert result["test"]["accuracy"] > 1 / 9, "no better than chance after one epoch"


# ---------------------------------------------------------------------------- estimator


def test_gru_classifier_fit_predict_score_and_clone() -> None:
    from grukit import GRUClassifier

    cases = tiny_cases(40, 0)
    X = [x for x, _ in cases]
    y = np.array([label for _, label in cases])
    clf = GRUClassifier(hidden_size=8, epochs=6, lr=0.03, batch_size=8)
    assert clf.fit(X, y) is clf
    proba = clf.predict_proba(X)
    assert proba.shape == (40, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert set(clf.predict(X)) <= {"up", "down"} and list(clf.classes_) == ["down", "up"]
    assert clf.score(X, y) >= 0.75
    # a padded array with lengths gives the same predictions
    T = max(len(x) for x in X)
    padded = np.zeros((40, T, 2), dtype=np.float32)
    for i, x in enumerate(X):
        padded[i, : len(x)] = x
    np.testing.assert_allclose(
        clf.predict_proba(padded, [len(x) for x in X]), proba, rtol=1e-5, atol=1e-6
    )
    sklearn = pytest.importorskip("sklearn.base")
    twin = sklearn.clone(clf)
    assert twin.get_params() == clf.get_params() and not hasattr(twin, "model_")
    assert twin.set_params(hidden_size=4).hidden_size == 4
    with pytest.raises(ValueError, match="invalid parameter"):
        clf.set_params(hiden_size=3)
    with pytest.raises(ValueError, match="not fitted"):
        GRUClassifier().predict(X)
