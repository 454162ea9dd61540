"""Tests for grukit.train (the Python API): the run folder, learning, determinism, early
stopping, NaN detection, resume, load_run/evaluate, config validation, weight noise and EMA.

Every run is a tiny GRU (8-12 units) on a tiny synthetic data set (see conftest.py), a few
epochs, on the CPU; nothing here asserts on time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from grukit.checkpoint import read_meta
from grukit.errors import CheckpointError, ConfigError, TrainingError
from grukit.runconfig import RunConfig, build_run_config
from grukit.runconfig import make_config as run_config
from grukit.tasks import load_task
from grukit.train import RESUMABLE_KEYS, Trainer, evaluate, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMING_KEYS = ("seconds", "seq_per_s", "elapsed_s")  # the only per-epoch values that may vary


def quiet(_: str) -> None:
    pass


def make_config(data: Path, out: Path, **overrides: Any) -> RunConfig:
    """A tiny run; every setting a test relies on is explicit (the defaults are the main job's
    and may change)."""
    values: dict[str, Any] = dict(
        data=str(data),
        hidden_size=8,
        num_layers=1,
        variant="gru",
        epochs=3,
        optimizer="adam",
        lr=0.03,
        batch_size=4,
        schedule="plateau",
        plateau_patience=4,
        patience=20,
        clip_grad_norm=1.0,
        dropout=0.0,
        input_dropout=0.0,
        output_dropout=0.0,
        weight_noise=0.0,
        ema=0.0,
        seed=1,
        out=str(out),
        progress=False,
    )
    values.update(overrides)
    return run_config(**values)


def fit(data: Path, out: Path, **overrides: Any) -> tuple[Trainer, dict[str, Any]]:
    trainer = Trainer(make_config(data, out, **overrides), log=quiet)
    return trainer, trainer.fit()


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def numbers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-epoch metrics without the wall-clock timings."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def final_numbers(run: Path) -> dict[str, Any]:
    final = json.loads((run / "final.json").read_text())
    return {
        "nll": {split: final[split]["nll"] for split in ("train", "valid", "test")},
        "best_epoch": final["best_epoch"],
        "epochs": final["epochs"],
        "stopped_by": final["stopped_by"],
    }


def parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same_tensors(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def finished(tiny_pickle: Path, tmp_path_factory: pytest.TempPathFactory):
    """One finished 4-epoch run, shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    trainer, result = fit(tiny_pickle, run, epochs=4)
    return trainer, result, run


# ---------------------------------------------------------------------------- the run folder


def test_fit_writes_the_run_folder(finished) -> None:
    trainer, result, run = finished

    saved = build_run_config(toml_path=run / "config.toml", announce=None)
    assert saved == trainer.config, "config.toml is not the resolved config"
    assert saved.model.hidden_size == 8 and saved.optim.epochs == 4
    assert saved.run.out == str(run)

    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4], "one metrics.jsonl line per epoch"
    for row in rows:
        missing = {"epoch", "train_loss", "valid_nll", "seconds", "lr"} - set(row)
        assert not missing, f"metrics.jsonl line lacks {missing}: {row}"
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["valid_nll"])
        assert row["seconds"] >= 0 and row["lr"] == pytest.approx(0.03)

    final = json.loads((run / "final.json").read_text())
    for split in ("train", "valid", "test"):
        assert math.isfinite(final[split]["nll"]) and final[split]["nll"] > 0
        assert final[split]["frames"] > 0
    best = min(rows, key=lambda r: r["valid_nll"])
    assert final["best_epoch"] == best["epoch"]
    assert final["valid"]["nll"] == pytest.approx(best["valid_nll"], rel=1e-9), (
        "final.json's valid NLL is not that of the best epoch's checkpoint"
    )
    assert final["epochs"] == 4 and final["stopped_by"] == "epochs"
    assert json.loads(json.dumps(result)) == final, "fit() returned something else than final.json"

    for which in ("best", "last"):
        folder = run / "checkpoints" / which
        assert (folder / "model.safetensors").is_file() and (folder / "meta.json").is_file()
    assert read_meta(run / "checkpoints" / "best")["epoch"] == final["best_epoch"]
    last = read_meta(run / "checkpoints" / "last")
    assert last["epoch"] == 4 and last["trainer"]["best_epoch"] == final["best_epoch"]
    for name in ("optimizer.json", "scheduler.json", "rng.json"):
        assert (run / "checkpoints" / "last" / name).is_file(), f"last lacks {name} for --resume"

    assert (run / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_the_loss_goes_down_on_structured_data(tiny_pickle: Path, tmp_path: Path) -> None:
    _, result = fit(tiny_pickle, tmp_path / "run", hidden_size=12, epochs=6)
    rows = read_metrics(tmp_path / "run")
    train = [r["train_loss"] for r in rows]
    valid = [r["valid_nll"] for r in rows]
    # 88 keys at p = 0.5 cost 88 ln 2 = 61 nats per frame; the model must get well below that
    assert train[0] > 40, f"an untrained model should start near 61 nats, got {train[0]}"
    assert all(b < a for a, b in zip(train, train[1:], strict=False)), f"train loss {train}"
    assert valid[-1] < 0.5 * valid[0], f"valid NLL did not halve in 6 epochs: {valid}"
    assert result["test"]["nll"] < 0.5 * 88 * math.log(2)


def test_a_fixed_seed_gives_identical_runs(tiny_pickle: Path, tmp_path: Path) -> None:
    # dropout on: the global RNG matters too, not only the initial weights and the data order
    kw = dict(seed=5, input_dropout=0.1, output_dropout=0.3)
    fit(tiny_pickle, tmp_path / "a", **kw)
    fit(tiny_pickle, tmp_path / "b", **kw)
    fit(tiny_pickle, tmp_path / "c", **{**kw, "seed": 6})
    a, b, c = (final_numbers(tmp_path / n) for n in "abc")
    assert a == b, "two runs with the same seed differ"
    assert numbers(read_metrics(tmp_path / "a")) == numbers(read_metrics(tmp_path / "b"))
    assert a["nll"] != c["nll"], "another seed gave the same numbers: is the seed used at all?"


# ---------------------------------------------------------------------------- early stopping


def test_early_stopping_when_nothing_can_improve(tiny_pickle: Path, tmp_path: Path) -> None:
    trainer = Trainer(make_config(tiny_pickle, tmp_path / "run", epochs=10, patience=1), log=quiet)
    trainer.optimizer.step = lambda *a, **k: None  # the weights never move: valid is constant
    result = trainer.fit()
    rows = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2], "patience 1: one epoch without progress stops"
    assert rows[0]["valid_nll"] == rows[1]["valid_nll"]
    assert result["stopped_by"] == "early stopping"
    assert result["best_epoch"] == 1 and result["epochs"] == 2


def test_patience_zero_never_stops_early(tiny_pickle: Path, tmp_path: Path) -> None:
    trainer = Trainer(make_config(tiny_pickle, tmp_path / "run", epochs=3, patience=0), log=quiet)
    trainer.optimizer.step = lambda *a, **k: None
    result = trainer.fit()
    assert result["epochs"] == 3 and result["stopped_by"] == "epochs"
    assert len(read_metrics(tmp_path / "run")) == 3


def test_a_time_budget_stops_after_the_epoch_that_crosses_it(
    tiny_pickle: Path, tmp_path: Path
) -> None:
    trainer, result = fit(tiny_pickle, tmp_path / "run", epochs=50, max_minutes=1e-9)
    assert result["stopped_by"] == "time budget" and result["epochs"] == 1
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 1 and rows[0]["elapsed_s"] >= rows[0]["seconds"] > 0
    resumed = Trainer.resume(tmp_path / "run", overrides={"max_minutes": 60.0}, log=quiet)
    assert resumed.fit()["epochs"] > 1, "a larger budget on resume trains on"
    later = read_metrics(tmp_path / "run")
    assert later[1]["elapsed_s"] > later[0]["elapsed_s"], "the clock runs on over a resume"


def test_early_stopping_counts_epochs_since_the_best(tiny_pickle: Path, tmp_path: Path) -> None:
    trainer = Trainer(make_config(tiny_pickle, tmp_path / "run", epochs=9, patience=2), log=quiet)
    script = [5.0, 4.0, 4.5, 4.0, 3.0, 2.0]  # best at 2; 3 and 4 (a tie) are no progress
    real_train, real_eval = trainer.train_epoch, trainer.evaluate
    pending = []

    def train_epoch(epoch: int) -> dict[str, float]:
        pending.append(epoch)
        return real_train(epoch)

    def scripted(split: str) -> dict[str, float]:
        if split == "valid" and pending:
            return {"nll": script[pending.pop() - 1]}
        return real_eval(split)

    trainer.train_epoch, trainer.evaluate = train_epoch, scripted
    result = trainer.fit()
    rows = read_metrics(tmp_path / "run")
    assert [r["valid_nll"] for r in rows] == script[:4]
    assert result["stopped_by"] == "early stopping"
    assert result["best_epoch"] == 2 and result["epochs"] == 4
    assert read_meta(tmp_path / "run" / "checkpoints" / "best")["epoch"] == 2


# ---------------------------------------------------------------------------- NaN and Inf


class PoisonedTask:
    """The music task, whose training loss becomes ``value`` at the ``at``-th training step."""

    def __init__(self, data: Path, value: float, at: int) -> None:
        self.inner = load_task("music", str(data), progress=False)
        self.value, self.at, self.calls = value, at, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, int]:
        loss, n = self.inner.loss(model, batch)
        if model.training:
            self.calls += 1
            if self.calls == self.at:
                loss = loss * self.value
        return loss, n


@pytest.mark.parametrize(
    ("value", "at", "where"),
    [(math.nan, 5, "epoch 2, step 2"), (math.inf, 1, "epoch 1, step 1")],
)
def test_a_non_finite_loss_names_epoch_and_step(
    tiny_pickle: Path, tmp_path: Path, value: float, at: int, where: str
) -> None:
    # 12 training sequences in batches of 4: 3 steps per epoch
    task = PoisonedTask(tiny_pickle, value, at)
    trainer = Trainer(make_config(tiny_pickle, tmp_path / "run", epochs=3), task=task, log=quiet)
    with pytest.raises(TrainingError) as info:
        trainer.fit()
    message = str(info.value)
    assert where in message, f"the message should name {where!r}: {message}"
    assert str(value) in message, f"the message should give the loss ({value}): {message}"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters()), (
        "the non-finite loss reached the weights"
    )
    completed = (at - 1) // 3  # epochs finished before the bad step
    if completed:
        assert len(read_metrics(tmp_path / "run")) == completed
        assert read_meta(tmp_path / "run" / "checkpoints" / "last")["epoch"] == completed
    else:
        assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------- resume


def test_resume_refuses_an_incompatible_override(finished) -> None:
    _, _, run = finished
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError) as info:
        Trainer.resume(run, overrides={"hidden_size": 16, "epochs": 9}, log=quiet)
    message = str(info.value)
    assert "hidden_size=16" in message and "the run has 8" in message, message
    assert "epochs" in message  # the keys that may change are listed
    with pytest.raises(CheckpointError, match=r"lr=0\.5 \(the run has 0\.03\)"):
        Trainer.resume(run, overrides={"lr": 0.5}, log=quiet)
    assert (run / "metrics.jsonl").read_text() == before, "a refused resume touched the run"


def test_resumable_keys_are_the_harmless_ones() -> None:
    assert {"optim.epochs", "optim.patience", "run.progress", "run.out"} <= RESUMABLE_KEYS
    harmful = {"model.hidden_size", "model.variant", "optim.lr", "run.seed", "task.data"}
    assert not (harmful | {"optim.optimizer"}) & RESUMABLE_KEYS


def test_a_new_run_refuses_a_folder_that_holds_one(finished) -> None:
    trainer, _, run = finished
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(make_config(Path(trainer.config.task.data), run), log=quiet)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"output_dropout": 0.3}, id="dropout"),
        pytest.param(
            {"ema": 0.9, "weight_noise": 0.05, "input_dropout": 0.1, "output_dropout": 0.3},
            id="ema-noise-dropout",
        ),
    ],
)
def test_resume_with_more_epochs_continues_exactly(
    tiny_pickle: Path, tmp_path: Path, extra: dict[str, Any]
) -> None:
    fit(tiny_pickle, tmp_path / "straight", epochs=4, **extra)

    run = tmp_path / "resumed"
    fit(tiny_pickle, run, epochs=2, **extra)
    first_two = (run / "metrics.jsonl").read_text()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    logged: list[str] = []
    trainer = Trainer.resume(run, overrides={"epochs": 4}, log=logged.append)
    assert trainer.epoch == 2 and trainer.config.optim.epochs == 4
    assert any("after epoch 2" in line for line in logged), logged
    trainer.fit()

    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert (run / "metrics.jsonl").read_text().startswith(first_two), "epochs 1-2 were rewritten"
    assert numbers(rows) == numbers(read_metrics(tmp_path / "straight")), (
        "2 epochs + resume to 4 differ from 4 epochs in one go"
    )
    assert final_numbers(run) == final_numbers(tmp_path / "straight")
    assert build_run_config(toml_path=run / "config.toml", announce=None).optim.epochs == 4


def test_resume_with_an_unknown_override_key_is_a_grukit_error(finished) -> None:
    _, _, run = finished
    try:
        Trainer.resume(run, overrides={"epoch": 9}, log=quiet)  # a typo of "epochs"
    except (ConfigError, CheckpointError) as exc:
        assert "epoch" in str(exc)
    except Exception as exc:  # the point is which type escapes
        pytest.fail(
            f"Trainer.resume(overrides={{'epoch': 9}}) raised {type(exc).__name__}: {exc}; "
            "expected a ConfigError/CheckpointError naming the unknown key"
        )
    else:
        pytest.fail("an unknown override key was accepted")


def test_resume_with_more_epochs_under_a_cosine_schedule(tiny_pickle: Path, tmp_path: Path) -> None:
    """``epochs`` may change on resume; under ``schedule = "cosine"`` (whose period is the
    run's epochs) the resumed run must either be refused or keep a sensible schedule, not
    anneal to 0 at the old end and then climb back up."""
    run = tmp_path / "run"
    fit(tiny_pickle, run, epochs=2, schedule="cosine")
    try:
        trainer = Trainer.resume(run, overrides={"epochs": 5}, log=quiet)
    except CheckpointError:
        return  # refusing is fine
    trainer.fit()
    lrs = [r["lr"] for r in read_metrics(run)]
    assert len(lrs) == 5
    assert all(lr > 0 for lr in lrs[:-1]), f"an epoch before the last trained at lr 0: {lrs}"
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False)), (
        f"the cosine rate went back up after resuming with more epochs: {lrs}"
    )


# ---------------------------------------------------------------------------- load_run


def test_load_run_and_evaluate_reproduce_final_json(finished) -> None:
    _, _, run = finished
    final = json.loads((run / "final.json").read_text())
    config, task, model = load_run(run)
    assert config.model.hidden_size == 8 and not model.training
    for split in ("train", "valid", "test"):
        got = evaluate(task, model, split)
        assert got["nll"] == final[split]["nll"], f"{split}: {got} vs final.json {final[split]}"
        assert got["frames"] == final[split]["frames"]
    _, _, last = load_run(run, which="last")
    assert evaluate(task, last, "test")["nll"] == pytest.approx(final["test"]["nll"], rel=1e-9)


def test_load_run_of_the_last_checkpoint_with_ema(tiny_pickle: Path, tmp_path: Path) -> None:
    """``load_run(which="last")`` serves a run that is still training; with EMA (on by
    default) the evaluated weights are the average, which ``last`` holds beside the raw ones."""
    run = tmp_path / "run"
    fit(tiny_pickle, run, epochs=2, ema=0.9)
    saved = safetensors.torch.load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    try:
        _, task, model = load_run(run, which="last")
    except CheckpointError as exc:
        pytest.fail(f"load_run(which='last') cannot read a run trained with ema=0.9: {exc}")
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[f"averaged.{name}"]), f"{name} is not the EMA weight"
    assert math.isfinite(evaluate(task, model, "test")["nll"])


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"dropout": 1.5}, ["dropout", "1.5"]),
        ({"output_dropout": -0.1}, ["output_dropout", "-0.1"]),
        ({"optimizer": "sgd"}, ["optimizer", "sgd"]),
        ({"variant": "transformer"}, ["variant", "transformer", "gru"]),
        ({"schedule": "linear"}, ["schedule", "linear"]),
        ({"hidden_size": 0}, ["hidden_size"]),
        ({"lr": math.nan}, ["lr"]),
        ({"ema": 1.0}, ["ema"]),
        ({"weight_noise": -0.1}, ["weight_noise"]),
        ({"device": "tpu"}, ["device", "tpu"]),
    ],
)
def test_invalid_configs_raise_config_error(
    tiny_pickle: Path, tmp_path: Path, override: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        Trainer(make_config(tiny_pickle, tmp_path / "run", **override), log=quiet)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"
    assert not (tmp_path / "run").exists(), "an invalid config created the run folder"


# ---------------------------------------------------------------------------- weight noise, EMA


def test_weight_noise_perturbs_the_pass_but_restores_the_weights(
    tiny_pickle: Path, tmp_path: Path
) -> None:
    losses = {}
    for noise in (0.0, 0.5):
        trainer = Trainer(
            make_config(tiny_pickle, tmp_path / f"run{noise}", weight_noise=noise),
            log=quiet,
        )
        trainer.optimizer.step = lambda *a, **k: None
        before = parameters(trainer.model)
        losses[noise] = trainer.train_epoch(1)["train_loss"]
        assert same_tensors(parameters(trainer.model), before), (
            f"weight_noise={noise}: the weights changed without an optimizer step "
            "(the noise was not taken back out)"
        )
    assert losses[0.5] != losses[0.0], "weight_noise=0.5 did not change the training loss"


def test_ema_is_the_average_of_the_trained_weights(tiny_pickle: Path, tmp_path: Path) -> None:
    # one batch per epoch: one optimizer step, so the average is exactly checkable
    config = make_config(tiny_pickle, tmp_path / "run", ema=0.9, batch_size=64)
    trainer = Trainer(config, log=quiet)
    start = parameters(trainer.model)
    assert same_tensors(parameters(trainer.averaged), start)
    assert not any(p.requires_grad for p in trainer.averaged.parameters())
    trainer.train_epoch(1)
    moved = parameters(trainer.model)
    assert not same_tensors(moved, start)
    # the first update's decay is warmed up: min(0.9, (1 + 0) / (10 + 0)) = 0.1
    for avg, s, m in zip(parameters(trainer.averaged), start, moved, strict=True):
        torch.testing.assert_close(avg, 0.1 * s + 0.9 * m)


def test_ema_and_weight_noise_train_and_evaluate_the_average(
    tiny_pickle: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    trainer, result = fit(tiny_pickle, run, epochs=4, ema=0.9, weight_noise=0.05)
    rows = read_metrics(run)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["valid_nll"]) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert not same_tensors(parameters(trainer.averaged), parameters(trainer.model)), (
        "with ema the evaluated weights should differ from the raw ones"
    )
    # what is evaluated and kept as best is the average, not the raw weights
    _, task, best = load_run(run)
    assert same_tensors(parameters(best), parameters(trainer.averaged))
    assert evaluate(task, best, "test")["nll"] == result["test"]["nll"]
    assert evaluate(task, trainer.model, "test")["nll"] != result["test"]["nll"]


def test_on_epoch_sees_every_row_and_may_end_the_run(tiny_pickle: Path, tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    class StopError(Exception):
        pass

    def watch(row: dict[str, Any]) -> None:
        seen.append(row)
        if row["epoch"] == 2:
            raise StopError

    trainer = Trainer(make_config(tiny_pickle, tmp_path / "run", epochs=5), log=quiet,
                      on_epoch=watch)  # fmt: skip
    with pytest.raises(StopError):
        trainer.fit()
    assert [r["epoch"] for r in seen] == [1, 2] and "valid_nll" in seen[0]
    assert len(read_metrics(tmp_path / "run")) == 2, "the epoch that stopped it is saved"
    resumed = Trainer.resume(tmp_path / "run", log=quiet, on_epoch=seen.append)
    resumed.fit()
    assert [r["epoch"] for r in seen][2:] == [3, 4, 5]
