"""Tests for ``grukit tune`` (grukit.tune): the search space and its refusals, the study folder
(table, plot, best config that ``grukit train`` runs as it is), ``--json``, pruning, a study
resumed from SQLite, two worker processes on one study, and optuna as an optional import.

Every trial is a tiny GRU (4-8 units, 1-4 epochs, one thread) on the tiny synthetic data of
conftest.py; nothing here asserts on time.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import assert_one_line_error

from grukit.cli import main
from grukit.errors import ConfigError
from grukit.runconfig import build_run_config, make_config, packaged_configs
from grukit.tune import load_space, packaged_spaces, parse_space

optuna = pytest.importorskip("optuna")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPACE = """\
"optim.lr" = { low = 1e-3, high = 3e-2, log = true }
[model]
hidden_size = { low = 4, high = 8, step = 4 }
variant = { choices = ["gru", "mgu"] }
"""


def flags(data: Path, out: Path, space: Path, *extra: Any) -> list[str]:
    """A tiny search; every setting a test relies on is explicit."""
    values: list[Any] = [
        "tune", "--data", data, "--space", space, "--out", out, "--epochs", 2,
        "--batch-size", 4, "--weight-noise", 0, "--ema", 0, "--patience", 0, "--threads", 1,
        "--sample-length", 0, "--no-progress", *extra,
    ]  # fmt: skip
    return [str(v) for v in values]


def call(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write_space(tmp_path: Path, text: str = SPACE) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def read_table(study: Path) -> list[dict[str, str]]:
    with open(study / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def final(run: Path) -> dict[str, Any]:
    return json.loads((run / "final.json").read_text())


def stored_trials(db: Path, name: str) -> list[Any]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


# ---------------------------------------------------------------------------- a study


def test_a_two_trial_study_writes_a_best_config_that_train_runs(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    study = tmp_path / "study"
    status, out, err = call(capsys, flags(tiny_pickle, study, write_space(tmp_path), "--trials", 2))
    assert status == 0, err
    names = sorted(os.listdir(study))
    assert names == [
        ".grukit-study", "best.toml", "history.png", "trial-0000", "trial-0001", "trials.csv"
    ]  # fmt: skip
    rows = read_table(study)
    assert [r["trial"] for r in rows] == ["0", "1"] and {r["state"] for r in rows} == {"complete"}
    for r in rows:  # each row's value is its run's best validation NLL
        assert float(r["value"]) == final(Path(r["run"]))["valid"]["nll"]
        assert r["model.variant"] in ("gru", "mgu") and r["model.hidden_size"] in ("4", "8")
    best = min(rows, key=lambda r: float(r["value"]))
    assert (study / "history.png").read_bytes().startswith(PNG_MAGIC)
    assert f"| {best['trial']} * |" in out  # the printed table marks the best trial
    # best.toml is the best trial's config, with a fresh run folder
    config = build_run_config(toml_path=study / "best.toml", announce=None)
    assert config.optim.lr == float(best["optim.lr"])
    assert config.model.hidden_size == int(best["model.hidden_size"])
    assert config.model.variant == best["model.variant"]
    assert config.run.out == "" and config.optim.epochs == 2 and config.optim.ema == 0
    # ... and `grukit train --config` runs it as it is: the same run, the same result
    again = tmp_path / "again"
    status, _, err = call(
        capsys, ["train", "--config", str(study / "best.toml"), "--out", str(again)]
    )
    assert status == 0, err
    assert final(again)["valid"]["nll"] == pytest.approx(float(best["value"]), rel=1e-6)


def test_json_prints_one_object_with_the_best_trial(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    study = tmp_path / "study"
    argv = flags(tiny_pickle, study, write_space(tmp_path), "--trials", 2, "--json")
    status, out, err = call(capsys, argv)
    assert status == 0, err
    report = json.loads(out)  # stdout holds the JSON only: the logs went to stderr
    assert "trial 1" in err
    assert set(report["best_params"]) == {"optim.lr", "model.hidden_size", "model.variant"}
    assert (
        Path(report["best_config"]) == study / "best.toml" and Path(report["best_config"]).is_file()
    )
    rows = read_table(study)
    assert report["best_value"] == min(float(r["value"]) for r in rows)
    best = rows[report["best_trial"]]
    assert report["best_params"]["model.variant"] == best["model.variant"]
    assert report["trials"] == report["complete"] == 2 and report["pruned"] == 0


def test_the_grid_sampler_runs_every_combination_once_and_stops(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    space = write_space(
        tmp_path,
        "[model]\nhidden_size = { low = 4, high = 8, step = 4 }\n"
        'variant = { choices = ["gru", "mgu"] }\n',
    )
    study = tmp_path / "study"
    argv = flags(tiny_pickle, study, space, "--trials", 9, "--sampler", "grid", "--json")
    status, out, err = call(capsys, argv)
    assert status == 0, err
    rows = read_table(study)
    assert sorted((r["model.hidden_size"], r["model.variant"]) for r in rows) == [
        ("4", "gru"), ("4", "mgu"), ("8", "gru"), ("8", "mgu")
    ]  # fmt: skip
    assert json.loads(out)["trials"] == 4  # the grid ended the study before --trials 9


def test_the_grid_sampler_refuses_a_continuous_range(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    argv = flags(tiny_pickle, tmp_path / "s", write_space(tmp_path), "--sampler", "grid")
    status, _, err = call(capsys, argv)
    assert status == 2 and "optim.lr in [0.001, 0.03] (float, log) is continuous" in err
    assert not (tmp_path / "s").exists()


def test_the_packaged_jsb_cell_grid_holds_the_readme_best_config(base: Any) -> None:
    from grukit.train import config_from_args

    space = load_space("jsb_cell", base)
    grid = {key: p.grid() for key, p in space.items()}
    assert grid == {
        "cell.layer_norm": [False, True], "cell.recurrent_dropout": [0.0, 0.25, 0.4],
        "cell.zoneout": [0.0, 0.1],
    }  # fmt: skip
    best = config_from_args("jsb_cell", {}, announce=lambda _: None).flat()
    assert all(best[key] in values for key, values in grid.items())


# ---------------------------------------------------------------------------- pruning


@pytest.mark.parametrize(("pruner", "states"), [("median", ["COMPLETE", "PRUNED"]),
                                                ("none", ["COMPLETE", "COMPLETE"])])  # fmt: skip
def test_the_pruner_stops_a_trial_that_reports_a_bad_metric(
    tiny_pickle: Path, tmp_path: Path, capsys, pruner: str, states: list[str]
) -> None:
    # the first trial learns (lr 0.03), the second hardly moves (lr 1e-6): after its first
    # epoch it is behind the first trial's first epoch, which the median pruner stops
    db = tmp_path / "study.db"
    made = optuna.create_study(study_name="p", storage=f"sqlite:///{db}", direction="minimize")
    made.enqueue_trial({"optim.lr": 0.03})
    made.enqueue_trial({"optim.lr": 1e-6})
    space = write_space(tmp_path, '"optim.lr" = { low = 1e-6, high = 0.03, log = true }\n')
    study = tmp_path / "study"
    argv = flags(tiny_pickle, study, space, "--trials", 2, "--epochs", 4, "--storage",
                 f"sqlite:///{db}", "--study", "p", "--pruner", pruner,
                 "--pruner-startup-trials", 1)  # fmt: skip
    status, out, err = call(capsys, argv)
    assert status == 0, err
    trials = stored_trials(db, "p")
    assert [t.params["optim.lr"] for t in trials] == [0.03, 1e-6]
    assert [t.state.name for t in trials] == states
    assert sorted(trials[0].intermediate_values) == [1, 2, 3, 4]
    lines = (study / "trial-0001" / "metrics.jsonl").read_text().splitlines()
    if pruner == "median":
        assert sorted(trials[1].intermediate_values) == [1]
        assert len(lines) == 1  # stopped after its first epoch ...
        from grukit.rundir import check_resumable

        check_resumable(study / "trial-0001")  # ... and its run folder stays, checkpoints valid
        assert read_table(study)[1]["state"] == "pruned"
    else:
        assert len(lines) == 4


# ---------------------------------------------------------------------------- storage


def test_a_study_resumed_from_sqlite_continues_its_trial_numbers(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    db, study, space = tmp_path / "s.db", tmp_path / "study", write_space(tmp_path)
    for seed in (0, 1):
        argv = flags(tiny_pickle, study, space, "--trials", 1, "--seed", seed, "--storage",
                     f"sqlite:///{db}", "--study", "resumed")  # fmt: skip
        status, _, err = call(capsys, argv)
        assert status == 0, err
    trials = stored_trials(db, "resumed")
    assert [t.number for t in trials] == [0, 1] and {t.state.name for t in trials} == {"COMPLETE"}
    assert sorted(p.name for p in study.glob("trial-*")) == ["trial-0000", "trial-0001"]
    assert [r["trial"] for r in read_table(study)] == ["0", "1"]  # the table holds the whole study
    # without the storage the same folder is refused: a new study would reuse trial-0000
    status, _, err = call(capsys, flags(tiny_pickle, study, space, "--study", "resumed"))
    assert status == 2
    assert_one_line_error(err, "tune", "earlier search", "--storage")
    status, _, err = call(capsys, flags(tiny_pickle, study, space))  # and so is another study
    assert status == 2
    assert_one_line_error(err, "tune", "holds the study 'resumed'")
    assert [r["trial"] for r in read_table(study)] == ["0", "1"]


def test_two_worker_processes_share_one_sqlite_study(tiny_pickle: Path, tmp_path: Path) -> None:
    db, study, space = tmp_path / "w.db", tmp_path / "study", write_space(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    url = f"sqlite:///{db}"
    argvs = [
        flags(tiny_pickle, study, space, "--trials", 2, "--seed", seed, "--storage", url,
              "--study", "shared", "--json")
        for seed in (1, 2)
    ]  # fmt: skip
    workers = [  # started together: both create the database, the study, and trials at once
        subprocess.Popen(
            [sys.executable, "-m", "grukit", *argv],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for argv in argvs
    ]
    outputs = [w.communicate(timeout=240) for w in workers]
    for w, (out, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err
        assert json.loads(out)["best_value"] > 0
    trials = stored_trials(db, "shared")
    assert [t.number for t in trials] == [0, 1, 2, 3]  # the sum of both, no number twice
    assert {t.state.name for t in trials} == {"COMPLETE"}
    runs = [t.user_attrs["run"] for t in trials]
    assert len(set(runs)) == 4
    assert sorted(p.name for p in study.glob("trial-*")) == [f"trial-000{i}" for i in range(4)]
    for t in trials:  # each trial trained in its own folder, to the value the study holds
        assert final(Path(t.user_attrs["run"]))["valid"]["nll"] == t.value


# ---------------------------------------------------------------------------- the space


@pytest.fixture(scope="module")
def base() -> Any:
    return make_config(data="tiny.pickle", progress=False)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('"optim.lrr" = { low = 1, high = 2 }', ["optim.lrr", "did you mean 'optim.lr'"]),
        ('"task.horizon" = { low = 1, high = 4 }', ["task.horizon", "unknown key"]),
        ("lr = { low = 1e-3, high = 1e-2 }", ["'lr'", "section.key", "optim.lr"]),
        ('"optim.lr" = { low = 1e-2, high = 1e-3 }', ["optim.lr", "empty range"]),
        ('"optim.lr" = { low = 1e-2, high = 1e-2 }', ["optim.lr", "empty range"]),
        ('"optim.lr" = { low = 0.0, high = 1e-2, log = true }', ["optim.lr", "low > 0"]),
        ('"optim.lr" = { high = 1e-2 }', ["optim.lr", "low = ..., high = ...", "choices"]),
        ('"optim.lr" = { low = 1e-3, high = 1e-2, scale = "log" }', ["optim.lr", "scale"]),
        ('"optim.lr" = 0.01', ["optim.lr", "expects a table"]),
        ('"optim.lr" = { choices = [] }', ["optim.lr", "non-empty list"]),
        ('"optim.lr" = { choices = [0.1], low = 1 , high = 2}', ["optim.lr", "no other keys"]),
        ('"model.hidden_size" = { low = 16, high = 100, step = 16 }', ["hidden_size", "divide"]),
        ('"model.hidden_size" = { low = 16.5, high = 64 }', ["hidden_size", "int", "16.5"]),
        ('"model.hidden_size" = { low = 16, high = 64, step = 0 }', ["hidden_size", "positive"]),
        ('"model.variant" = { low = 1, high = 2 }', ["model.variant", "choices"]),
        ('"model.variant" = { choices = ["gru", 3] }', ["model.variant", "str", "3"]),
        ('"model.variant" = { choices = ["gru", "gru9"] }', ["model.variant", "gru9"]),
        ('"cell.zoneout" = { low = 0.0, high = 1.5 }', ["cell.zoneout", "1.5", "[0, 1)"]),
        ('"cell.layer_norm" = { low = 0, high = 1 }', ["cell.layer_norm", "choices"]),
        ('"optim.lr" = { low = 1e-3, high = 1e-2, log = "yes" }', ["optim.lr", "log"]),
        ('"task.name" = { choices = ["music"] }', ["task.name", "cannot be searched"]),
        ('"run.out" = { choices = ["a"] }', ["run.out", "cannot be searched"]),
        ("", ["empty"]),
    ],
)
def test_a_bad_space_is_refused_with_the_key_and_what_was_expected(
    tmp_path: Path, base: Any, text: str, words: list[str]
) -> None:
    path = write_space(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        load_space(path, base)
    for word in words:
        assert word in str(info.value), f"{word!r} missing from: {info.value}"


def test_a_good_space_in_either_spelling(base: Any) -> None:
    dotted = {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True},
              "model.hidden_size": {"low": 16, "high": 256, "step": 16},
              "optim.clip_grad_norm": {"low": 1, "high": 5}}  # fmt: skip
    sections = {"optim": {"lr": dotted["optim.lr"], "clip_grad_norm": {"low": 1, "high": 5}},
                "model": {"hidden_size": dotted["model.hidden_size"]}}  # fmt: skip
    a, b = parse_space(dotted, base), parse_space(sections, base)
    assert a == {k: b[k] for k in a} and set(a) == set(b)
    assert (a["optim.lr"].kind, a["optim.lr"].log) == ("float", True)
    assert (a["model.hidden_size"].kind, a["model.hidden_size"].step) == ("int", 16)
    # a float key takes integer bounds as floats
    assert (a["optim.clip_grad_norm"].kind, a["optim.clip_grad_norm"].low) == ("float", 1.0)
    task_key = parse_space({"task.sample_length": {"low": 0, "high": 8}}, base)
    assert task_key["task.sample_length"].kind == "int"


def test_the_packaged_space_is_not_a_run_config(base: Any) -> None:
    assert "jsb" in packaged_spaces()
    assert not any("space" in name or name == "jsb" for name in packaged_configs())
    space = load_space("jsb", base)
    assert {"optim.lr", "model.hidden_size", "cell.zoneout", "model.variant"} <= set(space)


# ---------------------------------------------------------------------------- refusals


def test_a_bad_space_on_the_command_line_is_one_line_and_writes_nothing(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    space = write_space(tmp_path, '"optim.lr" = { low = 1e-2, high = 1e-3 }\n')
    status, _, err = call(capsys, flags(tiny_pickle, tmp_path / "study", space, "--trials", 1))
    assert status == 2
    assert_one_line_error(err, "tune", "optim.lr", "empty range")
    assert not (tmp_path / "study").exists()


def test_an_out_folder_with_foreign_files_is_refused_and_left_alone(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    study = tmp_path / "mine"
    study.mkdir()
    (study / "notes.txt").write_text("keep me")
    status, _, err = call(capsys, flags(tiny_pickle, study, write_space(tmp_path), "--trials", 1))
    assert status == 2
    assert_one_line_error(err, "tune", "notes.txt", "did not write")
    assert os.listdir(study) == ["notes.txt"] and (study / "notes.txt").read_text() == "keep me"


def test_without_optuna_tune_says_how_to_install_it(
    tiny_pickle: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    status, _, err = call(capsys, flags(tiny_pickle, tmp_path / "s", write_space(tmp_path)))
    assert status == 2
    assert_one_line_error(err, "tune", "pip install 'grukit[tune]'")
    assert not (tmp_path / "s").exists()
