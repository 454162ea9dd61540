"""The task contract and the sectioned config: the registry, task-free core modules, short and
dotted keys, per-task options, the legacy flat layout, and cross-section checks."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

import grukit
from grukit.errors import ConfigError
from grukit.runconfig import (
    RunConfig,
    add_run_arguments,
    build_run_config,
    make_config,
    overrides_from_namespace,
    run_config_from_dict,
    short_names,
)
from grukit.tasks import REGISTRY, TASKS, get_task
from grukit.tasks.base import Task, TaskConfig

SRC = Path(grukit.__file__).parent


@pytest.mark.parametrize("name", TASKS)
def test_every_registered_task_declares_the_contract(name: str) -> None:
    cls = get_task(name)
    assert issubclass(cls, Task) and cls.name == name
    assert issubclass(cls.Config, TaskConfig) and is_dataclass(cls.Config)
    assert cls.Config().name == name, "the task's config must default to its own name"
    assert cls.monitor in cls.modes and set(cls.modes.values()) <= {"min", "max"}
    for key in cls.defaults:
        section, _, field = key.partition(".")
        assert section in ("model", "optim", "run"), key
    assert not getattr(cls, "__abstractmethods__", None), cls.__abstractmethods__


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="music, classify, forecast"):
        get_task("speech")


@pytest.mark.parametrize("module", ["train.py", "compare.py", "plots.py", "checkpoint.py"])
def test_the_core_holds_nothing_task_specific(module: str) -> None:
    """Adding a task touches its module and one registry line: the trainer, compare, plots and
    checkpoints name no task, metric, unit or data set."""
    text = (SRC / module).read_text()
    code = re.sub(r'""".*?"""', "", text, flags=re.S)  # docstrings may give examples
    code = "\n".join(line.split("#")[0] for line in code.splitlines())
    for word in ("nll", "frames", "88", "music", "piano", "accuracy", "mase", "jsb", "classify"):
        assert not re.search(rf"\b{word}\b", code), f"{module} mentions {word!r}"


def test_registry_entries_point_at_their_modules() -> None:
    for target in REGISTRY.values():
        module, cls = target.split(":")
        assert module.startswith("grukit.tasks.") and cls.endswith("Task"), target


# ---------------------------------------------------------------------------- config


def test_short_and_dotted_keys_are_the_same_key() -> None:
    a = make_config(hidden_size=12, lr=0.01, seed=3)
    b = build_run_config(
        overrides={"model.hidden_size": 12, "optim.lr": 0.01, "run.seed": 3}, announce=None
    )
    assert a == b and a.model.hidden_size == 12 and a.run.seed == 3
    names = short_names()
    assert names["task"] == "task.name" and names["data"] == "task.data"
    assert names["horizon"] == "task.horizon" and names["pooling"] == "task.pooling"


def test_task_defaults_sit_below_files_and_flags() -> None:
    cls = get_task("classify")
    cfg = make_config(task="classify")
    for key, value in cls.defaults.items():
        assert cfg.get(key) == value, key
    assert make_config(task="classify", ema=0.5).optim.ema == 0.5


def test_a_toml_file_in_sections_and_the_flat_legacy_layout(tmp_path: Path) -> None:
    sectioned = tmp_path / "s.toml"
    sectioned.write_text('[task]\nname = "forecast"\nhorizon = 6\n[model]\nhidden_size = 9\n')
    cfg = build_run_config(toml_path=sectioned, announce=None)
    assert cfg.task.name == "forecast" and cfg.task.horizon == 6 and cfg.model.hidden_size == 9
    flat = tmp_path / "f.toml"
    flat.write_text('data = "jsb"\nhidden_size = 46\noptimizer = "rmsprop"\n')
    cfg = build_run_config(toml_path=flat, announce=None)
    assert cfg.task.data == "jsb" and cfg.optim.optimizer == "rmsprop"
    # a saved config from grukit 0.1 (flat keys) still loads
    legacy = {"task": "music", "data": "jsb", "hidden_size": 46, "lr": 0.002, "out": "r"}
    assert run_config_from_dict(legacy).model.hidden_size == 46


def test_a_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = make_config(task="forecast", target="a,b", horizon=3, variant="mgu", seed=5)
    path = tmp_path / "c.toml"
    cfg.save_toml(path)
    assert build_run_config(toml_path=path, announce=None) == cfg
    assert run_config_from_dict(cfg.to_dict()) == cfg
    assert isinstance(cfg, RunConfig)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"task": "music", "horizon": 3}, ["task.horizon", "music"]),
        ({"backend": "scan", "variant": "gru"}, ["scan", "mingru"]),
        ({"backend": "fused", "variant": "lstm"}, ["fused", "lstm"]),
        ({"lr": 1e38}, ["lr"]),
        ({"hidden_sise": 4}, ["hidden_sise", "hidden_size"]),
        ({"task": "classify", "pooling": "median"}, ["pooling", "median"]),
        ({"task": "forecast", "missing": "guess"}, ["missing", "guess"]),
        ({"seed": -1}, ["seed"]),
    ],
)
def test_impossible_configs_are_refused_before_anything_runs(
    values: dict, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(**values)
    for word in words:
        assert word in str(info.value), info.value


def test_flags_reach_their_sections() -> None:
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    ns = parser.parse_args(
        ["--task", "forecast", "--horizon", "5", "--model.num-layers", "2", "--no-progress"]
    )
    assert overrides_from_namespace(ns) == {
        "task.name": "forecast", "task.horizon": 5, "model.num_layers": 2, "run.progress": False,
    }  # fmt: skip


def test_sections_are_typed_dataclasses() -> None:
    cfg = make_config()
    for section in ("task", "model", "cell", "optim", "run"):
        assert is_dataclass(getattr(cfg, section)), section
    assert {f.name for f in fields(cfg)} == {"task", "model", "cell", "optim", "run"}
