"""Tests for grukit.configuration: dataclass defaults, TOML files, command-line flags."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grukit.configuration import (
    add_dataclass_arguments,
    build_config,
    config_from_dict,
    config_from_toml,
    config_to_dict,
    overrides_from_namespace,
    save_config_toml,
    to_toml,
)
from grukit.errors import ConfigError


@dataclass
class TrainConfig:
    hidden_size: int = field(default=32, metadata={"help": "units per layer"})
    lr: float = field(default=3e-3, metadata={"help": "learning rate, 100% Adam"})
    dropout: float = 0.1
    optimizer: str = "adam"
    amp: bool = False
    max_steps: int | None = None
    grad_clip: float | None = 1.0
    run_name: str | None = None
    layers: tuple[int, ...] = (64, 64)
    tags: list[str] = field(default_factory=list)
    sizes: tuple[int, ...] | None = None

    def validate(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}")


def write(tmp_path, text, name="cfg.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def parse(argv, cls=TrainConfig, **kwargs):
    parser = argparse.ArgumentParser(prog="grukit-train")
    parser.add_argument("--config")
    add_dataclass_arguments(parser, cls, **kwargs)
    return parser, parser.parse_args(argv)


# -- defaults, TOML, overrides --------------------------------------------------------------


def test_defaults_without_file_or_overrides():
    messages = []
    cfg = build_config(TrainConfig, announce=messages.append)
    assert cfg == TrainConfig()
    assert messages == []


def test_toml_overrides_defaults_and_announces_changes(tmp_path):
    path = write(
        tmp_path,
        'hidden_size = 46\nlr = 1\noptimizer = "adam"\nlayers = [8, 16]\nmax_steps = 100\n',
    )
    messages = []
    cfg = build_config(TrainConfig, toml_path=path, announce=messages.append)
    assert cfg.hidden_size == 46
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)  # int accepted for float, stored as float
    assert cfg.layers == (8, 16)
    assert cfg.max_steps == 100
    assert cfg.dropout == 0.1  # untouched default
    # "optimizer" equals its default, so it is not announced
    assert messages == [
        "Overriding: hidden_size = 46",
        "Overriding: lr = 1.0",
        "Overriding: layers = [8, 16]",
        "Overriding: max_steps = 100",
    ]


def test_overrides_win_over_toml(tmp_path):
    path = write(tmp_path, "hidden_size = 46\ndropout = 0.2\n")
    messages = []
    cfg = build_config(
        TrainConfig,
        toml_path=path,
        overrides={"hidden_size": 64, "run_name": "exp"},
        announce=messages.append,
    )
    assert (cfg.hidden_size, cfg.dropout, cfg.run_name) == (64, 0.2, "exp")
    assert messages == [
        "Overriding: hidden_size = 46",
        "Overriding: dropout = 0.2",
        "Overriding: hidden_size = 64",
        "Overriding: run_name = 'exp'",
    ]


def test_config_from_toml_returns_only_checked_keys_of_the_file(tmp_path):
    path = write(tmp_path, "hidden_size = 46\nlr = 2\n")
    assert config_from_toml(TrainConfig, path) == {"hidden_size": 46, "lr": 2.0}


def test_toml_single_table_is_accepted(tmp_path):
    path = write(tmp_path, "[train]\nhidden_size = 12\namp = true\n")
    cfg = build_config(TrainConfig, toml_path=path, announce=None)
    assert (cfg.hidden_size, cfg.amp) == (12, True)


def test_toml_named_table_and_mixed_layout(tmp_path):
    path = write(tmp_path, "[model]\nx = 1\n[train]\nhidden_size = 12\n")
    assert config_from_toml(TrainConfig, path, table="train") == {"hidden_size": 12}
    with pytest.raises(ConfigError, match=r"no table \[eval\]"):
        config_from_toml(TrainConfig, path, table="eval")
    mixed = write(tmp_path, "hidden_size = 3\n[train]\nlr = 0.1\n", name="mixed.toml")
    with pytest.raises(ConfigError, match=r"mixed\.toml.*\[train\]"):
        config_from_toml(TrainConfig, mixed)


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, 'hidden_size = 4\noptimizer = "adam\n', name="broken.toml")
    with pytest.raises(ConfigError) as info:
        build_config(TrainConfig, toml_path=path, announce=None)
    message = str(info.value)
    assert "broken.toml" in message and "line 2" in message


def test_missing_and_non_utf8_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config_from_toml(TrainConfig, tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'optimizer = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="latin1.toml"):
        config_from_toml(TrainConfig, bad)


def test_unknown_key_lists_valid_keys_and_suggests(tmp_path):
    path = write(tmp_path, "hiden_size = 46\n")
    with pytest.raises(ConfigError) as info:
        build_config(TrainConfig, toml_path=path, announce=None)
    message = str(info.value)
    assert "cfg.toml" in message
    assert "'hiden_size' (did you mean 'hidden_size'?)" in message
    valid = sorted(TrainConfig.__dataclass_fields__)
    assert "valid keys: " + ", ".join(valid) in message


def test_unknown_override_and_kebab_case_suggestion():
    with pytest.raises(ConfigError, match=r"'hidden-size' \(did you mean 'hidden_size'\?\)"):
        build_config(TrainConfig, overrides={"hidden-size": 3}, announce=None)
    with pytest.raises(ConfigError) as info:
        build_config(TrainConfig, overrides={"zzz": 1}, announce=None)
    assert "did you mean" not in str(info.value)
    assert "unknown key 'zzz'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "expected", "got"),
    [
        ('hidden_size = "46"', "hidden_size", "expects int", "'46' (str)"),
        ("hidden_size = true", "hidden_size", "expects int", "True (bool)"),
        ("hidden_size = 4.0", "hidden_size", "expects int", "4.0 (float)"),
        ("lr = false", "lr", "expects float", "False (bool)"),
        ('lr = "0.1"', "lr", "expects float", "'0.1' (str)"),
        ("amp = 1", "amp", "expects bool", "1 (int)"),
        ("optimizer = 3", "optimizer", "expects str", "3 (int)"),
        ('layers = "64"', "layers", "expects tuple of int", "'64' (str)"),
        ("layers = [64, 1.5]", "layers", "expects tuple of int", "element 1.5 is float"),
        ("max_steps = 1.5", "max_steps", "expects int or None", "1.5 (float)"),
        ('max_steps = "None"', "max_steps", "expects int or None", "'None' (str)"),
        ("tags = [1]", "tags", "expects list of str", "element 1 is int"),
    ],
)
def test_ill_typed_toml_values(tmp_path, text, key, expected, got):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        build_config(TrainConfig, toml_path=path, announce=None)
    message = str(info.value)
    assert f"key '{key}'" in message and expected in message and got in message
    assert "cfg.toml" in message


def test_ill_typed_overrides_are_not_coerced():
    with pytest.raises(ConfigError, match=r"'hidden_size' expects int, got '46' \(str\)"):
        build_config(TrainConfig, overrides={"hidden_size": "46"}, announce=None)
    with pytest.raises(ConfigError, match=r"'hidden_size' expects int, got True"):
        build_config(TrainConfig, overrides={"hidden_size": True}, announce=None)
    with pytest.raises(ConfigError, match="'amp' expects bool"):
        build_config(TrainConfig, overrides={"amp": None}, announce=None)
    # "none" means None only in TOML files and on the command line
    with pytest.raises(ConfigError, match="'max_steps' expects int or None"):
        build_config(TrainConfig, overrides={"max_steps": "none"}, announce=None)


def test_none_values(tmp_path):
    path = write(tmp_path, 'grad_clip = "none"\nrun_name = "none"\nmax_steps = 7\n')
    cfg = build_config(TrainConfig, toml_path=path, overrides={"max_steps": None}, announce=None)
    assert cfg.grad_clip is None and cfg.run_name is None and cfg.max_steps is None


def test_validate_hook_is_called(tmp_path):
    path = write(tmp_path, "dropout = 1.0\n")
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
        build_config(TrainConfig, toml_path=path, announce=None)
    # a plain ValueError from validate() becomes a ConfigError
    with pytest.raises(ConfigError, match="unknown optimizer 'sgd'"):
        build_config(TrainConfig, overrides={"optimizer": "sgd"}, announce=None)
    with pytest.raises(ConfigError, match="dropout must be"):
        config_from_dict(TrainConfig, {"dropout": -0.5})


def test_required_field_and_unsupported_types():
    @dataclass
    class Needs:
        data: str
        epochs: int = 1

    with pytest.raises(ConfigError, match="missing required key.*data"):
        build_config(Needs, announce=None)
    assert build_config(Needs, overrides={"data": "x"}, announce=None) == Needs("x")

    @dataclass
    class Bad:
        mapping: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="Bad.mapping"):
        build_config(Bad, announce=None)


# -- command line ---------------------------------------------------------------------------


def test_cli_flags_become_overrides(tmp_path):
    _, ns = parse(
        [
            "--hidden-size",
            "46",
            "--lr",
            "1e-4",
            "--max-steps",
            "none",
            "--grad-clip",
            "none",
            "--layers",
            "8",
            "16",
            "--tags",
            "a",
            "b c",
            "--run-name",
            "exp1",
        ]
    )
    overrides = overrides_from_namespace(ns, TrainConfig)
    assert overrides == {
        "hidden_size": 46,
        "lr": 1e-4,
        "max_steps": None,
        "grad_clip": None,
        "layers": [8, 16],
        "tags": ["a", "b c"],
        "run_name": "exp1",
    }
    messages = []
    cfg = build_config(TrainConfig, overrides=overrides, announce=messages.append)
    assert cfg.layers == (8, 16) and cfg.tags == ["a", "b c"] and cfg.grad_clip is None
    assert "Overriding: hidden_size = 46" in messages
    assert "Overriding: lr = 0.0001" in messages
    assert "Overriding: max_steps = None" not in messages  # already the default


def test_cli_absent_flags_are_not_overrides():
    _, ns = parse([])
    assert overrides_from_namespace(ns, TrainConfig) == {}
    assert ns.config is None  # other arguments of the parser are left alone


def test_cli_over_toml(tmp_path):
    path = write(tmp_path, "hidden_size = 46\namp = true\n")
    _, ns = parse(["--config", str(path), "--no-amp"])
    cfg = build_config(
        TrainConfig,
        toml_path=ns.config,
        overrides=overrides_from_namespace(ns, TrainConfig),
        announce=None,
    )
    assert cfg.hidden_size == 46 and cfg.amp is False


@pytest.mark.parametrize(("argv", "value"), [(["--amp"], True), (["--no-amp"], False)])
def test_cli_bool_flags(argv, value):
    _, ns = parse(argv)
    assert overrides_from_namespace(ns, TrainConfig) == {"amp": value}


def test_cli_empty_sequence_and_optional_sequence():
    _, ns = parse(["--layers", "--sizes", "none"])
    assert overrides_from_namespace(ns, TrainConfig) == {"layers": [], "sizes": None}
    cfg = build_config(TrainConfig, overrides=overrides_from_namespace(ns, TrainConfig))
    assert cfg.layers == () and cfg.sizes is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--hidden-size", "abc"], "argument --hidden-size: expected an integer, got 'abc'"),
        (["--hidden-size", "1.5"], "argument --hidden-size: expected an integer, got '1.5'"),
        (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
        (["--max-steps", "None"], "argument --max-steps: expected an integer or 'none'"),
        (["--layers", "8", "x"], "argument --layers: expected an integer, got 'x'"),
        (["--sizes", "1", "none"], "argument --sizes: 'none' must be given alone"),
        (["--amp", "yes"], "unrecognized arguments: yes"),
        (["--hiden-size", "3"], "unrecognized arguments"),
    ],
)
def test_cli_bad_values_exit_with_message_naming_the_flag(capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err


def test_cli_help_shows_help_text_and_defaults():
    parser, _ = parse([])
    text = " ".join(parser.format_help().split())
    assert "--hidden-size INT units per layer (default: 32)" in text
    assert "learning rate, 100% Adam (default: 0.003)" in text  # '%' is escaped for argparse
    assert "--amp, --no-amp" in text
    assert "--max-steps INT default: none" in text
    assert "--layers [INT ...] default: 64 64" in text


def test_cli_exclude():
    parser, ns = parse([], exclude=("run_name",))
    assert "--run-name" not in parser.format_help()
    with pytest.raises(ConfigError, match="'run_nme'"):
        parse([], exclude=("run_nme",))


# -- saving and loading ---------------------------------------------------------------------


ODD = TrainConfig(
    hidden_size=-(2**40),
    lr=0.1 + 0.2,
    dropout=5e-324,
    optimizer="rmsprop",
    amp=True,
    max_steps=0,
    grad_clip=float("inf"),
    run_name='quote " backslash \\ tab\t newline\n ctrl \x01 del \x7f unicode é ✓ 𝄞',
    layers=(),
    tags=["", "none", "[x]", "# not a comment"],
    sizes=(1, 2, 3),
)


def test_save_config_toml_round_trip(tmp_path):
    path = tmp_path / "run" / "config.toml"
    path.parent.mkdir()
    for cfg in (TrainConfig(), ODD):
        save_config_toml(cfg, path)
        assert build_config(TrainConfig, toml_path=path, announce=None) == cfg
        assert config_from_dict(TrainConfig, config_to_dict(cfg)) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp files left


def test_saved_toml_is_readable(tmp_path):
    text = to_toml(TrainConfig())
    assert "# units per layer\nhidden_size = 32\n" in text
    assert 'max_steps = "none"\n' in text
    assert "layers = [64, 64]\n" in text
    assert "lr = 0.003\n" in text


def test_nan_and_negative_zero_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    save_config_toml(TrainConfig(grad_clip=float("nan"), lr=-0.0), path)
    cfg = build_config(TrainConfig, toml_path=path, announce=None)
    assert math.isnan(cfg.grad_clip)
    assert cfg.lr == 0.0 and math.copysign(1.0, cfg.lr) == -1.0


def test_save_refuses_ambiguous_none_string(tmp_path):
    with pytest.raises(ConfigError, match="run_name"):
        save_config_toml(TrainConfig(run_name="none"), tmp_path / "c.toml")
    assert not (tmp_path / "c.toml").exists()


def test_config_to_dict_is_json_ready_and_round_trips():
    d = config_to_dict(TrainConfig(layers=(1, 2), max_steps=None))
    assert d["layers"] == [1, 2] and d["max_steps"] is None
    back = json.loads(json.dumps(d))
    assert config_from_dict(TrainConfig, back, source="meta.json") == TrainConfig(layers=(1, 2))
    with pytest.raises(ConfigError, match=r"meta\.json: unknown key 'layer'"):
        config_from_dict(TrainConfig, {"layer": [1]}, source="meta.json")


finite = st.floats(allow_nan=False)
text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)


@settings(max_examples=60, deadline=None)
@given(
    hidden_size=st.integers(-(2**63), 2**63 - 1),
    lr=finite,
    grad_clip=st.none() | finite,
    run_name=st.none() | text.filter(lambda s: s != "none"),
    layers=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4).map(tuple),
    tags=st.lists(text, max_size=4),
    amp=st.booleans(),
)
def test_toml_round_trip_property(tmp_path_factory, **values):
    cfg = TrainConfig(**values)
    path = tmp_path_factory.mktemp("rt") / "config.toml"
    save_config_toml(cfg, path)
    assert build_config(TrainConfig, toml_path=path, announce=None) == cfg
