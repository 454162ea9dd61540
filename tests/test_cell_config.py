"""The ``[cell]`` section of a run config: in-cell regularisation (grukit.cell_options) from
flags, TOML files and saved configs, checked against the variant, built into the models and
kept by a run (saved, and fixed on resume).

Models with options run ``backend = "reference"``; every run is a tiny GRU on the tiny
synthetic data set of conftest.py, on the CPU.
"""

from __future__ import annotations

import argparse
import io
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import assert_one_line_error

from grukit.cli import main
from grukit.compare import model_parameters
from grukit.errors import CheckpointError, ConfigError
from grukit.models import Forecaster, SequenceClassifier, SequenceModel, recurrent_stack
from grukit.rnn import count_parameters
from grukit.runconfig import (
    RESUMABLE_KEYS,
    SECTIONS,
    CellConfig,
    ModelConfig,
    RunConfig,
    add_run_arguments,
    build_run_config,
    make_config,
    overrides_from_namespace,
    run_config_from_dict,
)
from grukit.tasks import load_task
from grukit.train import Trainer, build_model

CELL_KEYS = ("recurrent_dropout", "candidate_dropout", "zoneout", "layer_norm", "weight_drop")


def quiet(_: str) -> None:
    pass


def parse(*argv: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return overrides_from_namespace(parser.parse_args(list(argv)))


def tiny(data: Path, out: Path, **overrides: Any) -> RunConfig:
    values: dict[str, Any] = dict(
        data=str(data), hidden_size=8, num_layers=1, variant="gru", backend="reference",
        epochs=2, lr=0.03, batch_size=4, weight_noise=0.0, ema=0.0, seed=1, out=str(out),
        progress=False,
    )  # fmt: skip
    values.update(overrides)
    return make_config(**values)


# ---------------------------------------------------------------------------- the section


def test_the_section_sits_between_model_and_optim() -> None:
    assert list(SECTIONS) == ["model", "cell", "optim", "run"]
    assert SECTIONS["cell"] is CellConfig
    cfg = make_config()
    assert list(cfg.sections()) == ["task", "model", "cell", "optim", "run"]
    assert cfg.cell == CellConfig()
    assert [getattr(cfg.cell, k) for k in CELL_KEYS] == [0.0, 0.0, 0.0, False, 0.0]
    assert not cfg.cell.options().any


def test_cell_keys_do_not_change_on_resume() -> None:
    assert not {k for k in RESUMABLE_KEYS if k.startswith("cell.")}


# ---------------------------------------------------------------------------- flags


def test_short_flags_reach_the_cell_section() -> None:
    got = parse(
        "--zoneout", "0.1", "--layer-norm", "--recurrent-dropout", "0.2",
        "--candidate-dropout", "0.3", "--weight-drop", "0.4",
    )  # fmt: skip
    assert got == {
        "cell.zoneout": 0.1, "cell.layer_norm": True, "cell.recurrent_dropout": 0.2,
        "cell.candidate_dropout": 0.3, "cell.weight_drop": 0.4,
    }  # fmt: skip
    cfg = build_run_config(overrides=got, announce=None)
    assert (cfg.cell.zoneout, cfg.cell.layer_norm, cfg.cell.weight_drop) == (0.1, True, 0.4)


def test_dotted_flags_and_no_layer_norm() -> None:
    got = parse("--cell.zoneout", "0.25", "--cell.layer-norm", "--cell.candidate-dropout", "0.1")
    assert got == {"cell.zoneout": 0.25, "cell.layer_norm": True, "cell.candidate_dropout": 0.1}
    assert parse("--no-layer-norm") == {"cell.layer_norm": False}
    assert parse("--no-cell.layer-norm") == {"cell.layer_norm": False}


def test_the_cell_keys_do_not_take_the_models_dropout_names() -> None:
    got = parse("--dropout", "0.1", "--input-dropout", "0.2", "--recurrent-dropout", "0.3")
    assert got == {
        "model.dropout": 0.1, "model.input_dropout": 0.2, "cell.recurrent_dropout": 0.3
    }  # fmt: skip


def test_keyword_names_and_dotted_keys_are_the_same() -> None:
    a = make_config(zoneout=0.1, layer_norm=True)
    b = build_run_config(overrides={"cell.zoneout": 0.1, "cell.layer_norm": True}, announce=None)
    assert a == b and a.cell.zoneout == 0.1 and a.cell.layer_norm is True


# ---------------------------------------------------------------------------- TOML and saved


def test_a_toml_cell_section_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[model]\nvariant = "mgu"\nhidden_size = 9\n'
        "[cell]\nzoneout = 0.15\nlayer_norm = true\nweight_drop = 0.2\n"
    )
    cfg = build_run_config(toml_path=path, announce=None)
    assert cfg.model.variant == "mgu" and cfg.model.hidden_size == 9
    assert cfg.cell == CellConfig(zoneout=0.15, layer_norm=True, weight_drop=0.2)


def test_a_flat_toml_and_a_flat_saved_config_map_cell_keys(tmp_path: Path) -> None:
    path = tmp_path / "flat.toml"
    path.write_text("hidden_size = 9\nzoneout = 0.2\nlayer_norm = true\n")
    cfg = build_run_config(toml_path=path, announce=None)
    assert cfg.cell.zoneout == 0.2 and cfg.cell.layer_norm is True
    legacy = {"task": "music", "data": "jsb", "hidden_size": 46, "zoneout": 0.05}
    assert run_config_from_dict(legacy).cell.zoneout == 0.05


def test_the_config_round_trips(tmp_path: Path) -> None:
    cfg = make_config(
        variant="mgu", recurrent_dropout=0.1, candidate_dropout=0.2, zoneout=0.3,
        layer_norm=True, weight_drop=0.4, seed=5,
    )  # fmt: skip
    text = cfg.to_toml()
    assert "[cell]" in text and "zoneout = 0.3" in text and "layer_norm = true" in text
    assert text.index("[model]") < text.index("[cell]") < text.index("[optim]")
    path = tmp_path / "c.toml"
    cfg.save_toml(path)
    assert build_run_config(toml_path=path, announce=None) == cfg
    assert cfg.to_dict()["cell"] == {
        "recurrent_dropout": 0.1, "candidate_dropout": 0.2, "zoneout": 0.3, "layer_norm": True,
        "weight_drop": 0.4,
    }  # fmt: skip
    assert run_config_from_dict(cfg.to_dict()) == cfg
    assert cfg.flat()["cell.weight_drop"] == 0.4 and cfg.get("cell.zoneout") == 0.3
    assert cfg.replace(**{"cell.zoneout": 0.0}).cell.zoneout == 0.0


def test_a_saved_config_without_a_cell_section_loads_with_defaults(tmp_path: Path) -> None:
    cfg = make_config(hidden_size=12)
    saved = cfg.to_dict()
    del saved["cell"]  # a run saved before [cell] existed
    assert run_config_from_dict(saved) == cfg
    text = cfg.to_toml()
    start = text.index("[cell]")
    old = text[:start] + text[text.index("[optim]") :]
    assert "[cell]" not in old and "zoneout" not in old
    path = tmp_path / "old.toml"
    path.write_text(old)
    loaded = build_run_config(toml_path=path, announce=None)
    assert loaded == cfg and loaded.cell == CellConfig()


# ---------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"zoneout": 1.0}, ["cell.zoneout", "[0, 1)", "1.0"]),
        ({"zoneout": -0.1}, ["cell.zoneout", "[0, 1)", "-0.1"]),
        ({"recurrent_dropout": 1}, ["cell.recurrent_dropout", "[0, 1)"]),
        ({"candidate_dropout": float("nan")}, ["cell.candidate_dropout", "nan"]),
        ({"weight_drop": 1.5}, ["cell.weight_drop", "1.5"]),
        ({"layer_norm": "yes"}, ["cell.layer_norm", "bool", "'yes'"]),
        ({"zoneout": "0.1"}, ["cell.zoneout", "float"]),
        ({"variant": "lstm", "zoneout": 0.1}, ["lstm", "zoneout", "GRU-family"]),
        ({"variant": "rnn_tanh", "layer_norm": True}, ["rnn_tanh", "layer_norm"]),
        ({"variant": "mingru", "recurrent_dropout": 0.1}, ["recurrent_dropout", "minGRU"]),
        ({"variant": "mingru", "weight_drop": 0.1}, ["weight_drop", "minGRU"]),
    ],
)
def test_bad_values_and_combinations_are_refused(values: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(**values)
    for word in words:
        assert word in str(info.value), info.value


def test_a_bad_cell_value_in_a_toml_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nvariant = "lstm"\n[cell]\nzoneout = 0.1\n')
    with pytest.raises(ConfigError, match="lstm"):
        build_run_config(toml_path=path, announce=None)
    path.write_text("[cell]\nzonout = 0.1\n")
    with pytest.raises(ConfigError, match="cell.zoneout"):  # the typo's suggestion
        build_run_config(toml_path=path, announce=None)


def test_mingru_takes_zoneout_candidate_dropout_and_layer_norm() -> None:
    cfg = make_config(variant="mingru", zoneout=0.1, candidate_dropout=0.1, layer_norm=True)
    assert cfg.cell.options().check("mingru") is not None


def test_a_bad_combination_on_the_command_line_is_one_line(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    argv = ["train", "--data", str(tiny_pickle), "--out", str(tmp_path / "run"), "--no-progress",
            "--variant", "lstm", "--zoneout", "0.1"]  # fmt: skip
    assert main(argv) == 2
    _, err = capsys.readouterr()
    assert_one_line_error(err, "train", "lstm", "zoneout")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- models


def test_baselines_build_with_the_default_cell() -> None:
    for variant in ("lstm", "rnn_tanh"):
        rnn = recurrent_stack(3, ModelConfig(variant=variant, hidden_size=4), CellConfig())
        assert rnn.variant == variant and not rnn.cell_options.any


def test_recurrent_stack_passes_the_options() -> None:
    model = ModelConfig(hidden_size=4, num_layers=2, backend="reference")
    cell = CellConfig(recurrent_dropout=0.1, candidate_dropout=0.2, zoneout=0.3, weight_drop=0.4)
    rnn = recurrent_stack(3, model, cell)
    assert rnn.cell_options == cell.options()
    assert not recurrent_stack(3, model).cell_options.any


def test_every_head_takes_a_cell_section() -> None:
    model = ModelConfig(hidden_size=4, backend="reference")
    cell = CellConfig(layer_norm=True, zoneout=0.1)
    nets = [
        SequenceModel(3, 5, model, cell=cell),
        SequenceClassifier(3, 4, model, "mean", cell=cell),
        Forecaster(2, 2, 3, model, "direct", cell=cell),
    ]
    for net in nets:
        assert net.rnn.cell_options.zoneout == 0.1
        assert any("layer_norm_ih_l0" in name for name, _ in net.named_parameters())
    plain = SequenceClassifier(3, 4, model, "mean")  # positional arguments as before
    assert not any("layer_norm" in name for name, _ in plain.named_parameters())


def test_train_build_model_for_music(tiny_pickle: Path, tmp_path: Path) -> None:
    overrides = parse("--zoneout", "0.1", "--layer-norm", "--backend", "reference")
    cfg = build_run_config(
        overrides={**overrides, "data": str(tiny_pickle), "hidden_size": 8}, announce=None
    )
    task = load_task(cfg.task, progress=False)
    model = build_model(cfg, task)
    assert model.rnn.cell_options.zoneout == 0.1 and model.rnn.cell_options.layer_norm
    names = [name for name, _ in model.named_parameters()]
    assert any("layer_norm_ih_l0" in n for n in names), names
    assert any("layer_norm_hh_l0" in n for n in names), names
    # compare's parameter count includes the gains: (Gx + Gh) * H more for one gru layer
    plain = model_parameters(task, cfg.model)
    assert model_parameters(task, cfg.model, cfg.cell) == plain + 6 * 8
    assert count_parameters("gru", task.input_size, 8, layer_norm=True) == (
        count_parameters("gru", task.input_size, 8) + 6 * 8
    )


# ---------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def trained(tiny_pickle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``grukit train`` with in-cell options, one epoch on the reference backend."""
    run = tmp_path_factory.mktemp("cell") / "run"
    argv = ["train", "--data", tiny_pickle, "--hidden-size", 8, "--epochs", 1, "--seed", 3,
            "--out", run, "--no-progress", "--backend", "reference", "--zoneout", 0.1,
            "--recurrent-dropout", 0.1]  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main([str(a) for a in argv])
    assert status == 0, err.getvalue()
    return run


def test_a_run_saves_its_cell_section(trained: Path) -> None:
    text = (trained / "config.toml").read_text()
    assert "[cell]" in text
    section = text[text.index("[cell]") : text.index("[optim]")]
    assert "zoneout = 0.1" in section and "recurrent_dropout = 0.1" in section
    saved = build_run_config(toml_path=trained / "config.toml", announce=None)
    assert saved.cell == CellConfig(zoneout=0.1, recurrent_dropout=0.1)
    assert saved.model.backend == "reference"


def test_resume_with_another_zoneout_is_refused(trained: Path, capsys) -> None:
    before = (trained / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError) as info:
        Trainer.resume(trained, overrides={"zoneout": 0.2, "epochs": 2}, log=quiet)
    message = str(info.value)
    assert "cell.zoneout=0.2" in message and "the run has 0.1" in message, message
    with pytest.raises(CheckpointError, match=r"cell\.layer_norm=True \(the run has False\)"):
        Trainer.resume(trained, overrides={"cell.layer_norm": True}, log=quiet)
    assert main(["train", "--resume", str(trained), "--zoneout", "0.2"]) == 2
    _, err = capsys.readouterr()
    assert_one_line_error(err, "train", "cell.zoneout=0.2", "the run has 0.1")
    assert (trained / "metrics.jsonl").read_text() == before, "a refused resume touched the run"


def test_resume_with_the_same_cell_options_continues(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    trainer = Trainer.resume(run, overrides={"epochs": 2, "zoneout": 0.1}, log=quiet)
    assert trainer.config.cell == CellConfig(zoneout=0.1, recurrent_dropout=0.1)
    assert trainer.fit()["epochs"] == 2
