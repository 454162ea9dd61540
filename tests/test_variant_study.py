"""The variant study's committed reports are whole (every variant, three seeds, parameter-matched)
and the README's tables are what ``benchmarks/variant_study.py table`` prints from them."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "variant-study"
BEGIN, END = "<!-- variant-study tables -->", "<!-- /variant-study tables -->"


def _study():
    spec = importlib.util.spec_from_file_location(
        "variant_study", ROOT / "benchmarks" / "variant_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_task_report_is_whole_and_parameter_matched():
    study = _study()
    done = [t for t in study.TASKS if (RESULTS / f"{t}.json").is_file()]
    assert set(done) == set(study.TASKS)  # all six tasks of the issue
    for task in done:
        report = json.loads((RESULTS / f"{task}.json").read_text())
        rows = {r["variant"]: r for r in report["models"]}
        assert sorted(rows) == sorted(study.VARIANTS), task
        assert all(r["seeds"] == study.SEEDS for r in rows.values()), task
        assert rows["gru"]["hidden_size"] == study.TASKS[task][2], task
        own_list = {"jsb": ("lstm", "rnn_tanh")}.get(task, ())  # Chung et al.'s own sizes
        target = rows["gru"]["parameters"]
        for variant, row in rows.items():
            if variant not in own_list:
                assert abs(row["parameters"] - target) <= 0.05 * target, (task, variant)
        cost = json.loads((RESULTS / f"{task}.cost.json").read_text())
        assert sorted(cost["ms_per_step"]) == sorted(study.VARIANTS), task


def test_readme_tables_are_the_study_table_command_output():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert BEGIN in readme and END in readme
    shown = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _study().main(["table", "--out", str(RESULTS)]) == 0
    assert shown == printed.getvalue().strip()


def test_table_names_a_task_that_was_not_run(tmp_path, capsys):
    assert _study().main(["table", "--out", str(tmp_path), "--tasks", "sunspots"]) == 0
    assert "not run yet" in capsys.readouterr().err


def test_unknown_task_is_refused():
    with pytest.raises(SystemExit):
        _study().main(["table", "--tasks", "imdb"])


def test_step_costs_time_every_model_of_the_report(tmp_path):
    study = _study()
    report = {
        "models": [{"variant": "gru", "hidden_size": 8}, {"variant": "mgu", "hidden_size": 9}]
    }
    (tmp_path / "sunspots.json").write_text(json.dumps(report))
    cost = study.step_costs("sunspots", tmp_path, tmp_path, threads=1, rounds=2, batches=1)
    assert sorted(cost["ms_per_step"]) == ["gru", "mgu"] and cost["vs_gru"]["gru"] == 1.0
    assert all(ms > 0 for ms in cost["ms_per_step"].values())
    assert json.loads((tmp_path / "sunspots.cost.json").read_text()) == cost
