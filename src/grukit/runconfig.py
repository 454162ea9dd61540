"""The run configuration in sections: ``[task]``, ``[model]``, ``[cell]``, ``[optim]``, ``[run]``.

A run config is five typed dataclasses. ``[task]`` holds ``name``, ``data`` and the options of
that task (its ``Config`` class, looked up in the task registry); the other sections are common
to every task. ``[cell]`` holds the regularisation inside the recurrent cell
(:mod:`grukit.cell_options`), checked against ``model.variant``. TOML files and flags address a
key as ``section.key`` (``--model.hidden-size 46``) or, where the name is unique, by the key
alone (``--hidden-size 46``; ``--task`` and ``--data`` for ``task.name`` and ``task.data``).
Values resolve as: section defaults, then the task's own ``defaults``, then a TOML file, then
the flags; every key is type-checked and unknown keys are refused with the valid list.

A flat TOML file or saved config (grukit 0.1: ``hidden_size = 46`` at the top level) is read
through the same short names, so old run folders and configs keep working.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grukit import configuration as C
from grukit.errors import ConfigError
from grukit.tasks import REGISTRY, get_task
from grukit.tasks.base import TaskConfig, opt

__all__ = [
    "CONFIG_DIR",
    "RESUMABLE_KEYS",
    "SECTIONS",
    "CellConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "RuntimeConfig",
    "add_run_arguments",
    "build_run_config",
    "make_config",
    "overrides_from_namespace",
    "packaged_configs",
    "resolve_config_path",
    "resolve_device",
    "run_config_from_dict",
]


@dataclass
class ModelConfig:
    """``[model]``: the recurrent stack every task builds its head on."""

    variant: str = opt("gru", "recurrent cell, one of grukit.ALL_VARIANTS")
    hidden_size: int = opt(256, "units per recurrent layer (per direction)")
    num_layers: int = opt(1, "stacked recurrent layers")
    bidirectional: bool = opt(False, "run each layer in both directions (not for music)")
    dropout: float = opt(0.0, "dropout between recurrent layers")
    input_dropout: float = opt(0.0, "dropout on the inputs")
    output_dropout: float = opt(0.0, "dropout before the read-out")
    backend: str = opt("auto", "auto, fused, reference or scan (grukit.backends)")

    def validate(self) -> None:
        from grukit.backends import BACKENDS
        from grukit.variants import ALL_VARIANTS, BASELINES, get_variant

        _check(
            self.variant in ALL_VARIANTS,
            f"model.variant must be one of {', '.join(ALL_VARIANTS)}, got {self.variant!r}",
        )
        _check(
            self.backend in BACKENDS,
            f"model.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}",
        )
        _check(self.hidden_size > 0, f"model.hidden_size must be positive, got {self.hidden_size}")
        _check(
            self.hidden_size <= 65536,
            f"model.hidden_size must be at most 65536, got {self.hidden_size}",
        )
        _check(self.num_layers > 0, f"model.num_layers must be positive, got {self.num_layers}")
        _check(self.num_layers <= 64, f"model.num_layers must be at most 64, got {self.num_layers}")
        for name in ("dropout", "input_dropout", "output_dropout"):
            _check_probability(f"model.{name}", getattr(self, name))
        if self.backend == "scan":
            _check(
                self.variant == "mingru",
                f"model.backend 'scan' runs only variant 'mingru', not {self.variant!r}",
            )
        if self.backend == "fused":
            _check(
                self.variant not in BASELINES,
                f"model.backend 'fused' has no kernel for the baseline {self.variant!r}; "
                "use backend 'auto'",
            )
        if self.variant not in BASELINES:
            get_variant(self.variant)


@dataclass
class CellConfig:
    """``[cell]``: regularisation inside the recurrent cell (grukit.cell_options)"""

    recurrent_dropout: float = opt(
        0.0, "variational dropout on the state feeding the recurrent matmul (one mask per sequence)"
    )
    candidate_dropout: float = opt(0.0, "dropout on the candidate n (a fresh mask per step)")
    zoneout: float = opt(
        0.0, "probability that a unit keeps its previous value (expectation at evaluation)"
    )
    layer_norm: bool = opt(
        False, "layer normalisation of every block's input and recurrent pre-activations"
    )
    weight_drop: float = opt(0.0, "DropConnect on weight_hh (one mask per forward call)")

    def validate(self) -> None:
        for name in ("recurrent_dropout", "candidate_dropout", "zoneout", "weight_drop"):
            _check_probability(f"cell.{name}", getattr(self, name))

    def options(self) -> Any:
        """The :class:`grukit.cell_options.CellOptions` of this section (not yet checked
        against a variant)."""
        from grukit.cell_options import CellOptions

        return CellOptions(**C.config_to_dict(self))


@dataclass
class OptimConfig:
    """``[optim]``: optimiser, schedule, regularisers of training, budget."""

    optimizer: str = opt("adam", "adam or rmsprop")
    lr: float = opt(1e-3, "learning rate")
    weight_decay: float = opt(0.0, "L2 penalty (decoupled for adam: AdamW)")
    schedule: str = opt(
        "plateau", "learning-rate schedule: plateau (halve when valid stalls), cosine, none"
    )
    plateau_patience: int = opt(
        4, "epochs without validation progress before the plateau schedule lowers the rate"
    )
    clip_grad_norm: float = opt(5.0, "clip the gradient's global norm to this (0 = off)")
    weight_noise: float = opt(
        0.05,
        "std of Gaussian noise added to every weight for each mini-batch's forward and "
        "backward pass (Graves 2011; Chung et al. 2014 used 0.075); 0 = off",
    )
    ema: float = opt(
        0.99,
        "decay of an exponential moving average of the weights, which is what is evaluated "
        "and kept as the best checkpoint; warmed up as min(ema, (1+t)/(10+t)) after t "
        "updates (0 = off)",
    )
    batch_size: int = opt(8, "items (sequences, windows) per mini-batch")
    epochs: int = opt(120, "maximum number of epochs")
    patience: int = opt(20, "early stopping: epochs without validation progress (0 = off)")
    max_minutes: float = opt(
        0.0, "stop after the epoch that brings training and validation past this many "
        "minutes of wall-clock time, over resumes (0 = no limit)",
    )  # fmt: skip

    def validate(self) -> None:
        _check(
            self.optimizer in ("adam", "rmsprop"),
            f"optim.optimizer must be adam or rmsprop, got {self.optimizer!r}",
        )
        _check(
            self.schedule in ("plateau", "cosine", "none"),
            f"optim.schedule must be plateau, cosine or none, got {self.schedule!r}",
        )
        _check(
            math.isfinite(self.lr) and 0 < self.lr <= 10,
            f"optim.lr must be a number in (0, 10], got {self.lr}",
        )
        _check(self.batch_size > 0, f"optim.batch_size must be positive, got {self.batch_size}")
        _check(self.epochs > 0, f"optim.epochs must be positive, got {self.epochs}")
        _check(self.epochs <= 1_000_000, f"optim.epochs must be at most 1000000, got {self.epochs}")
        for name in ("patience", "plateau_patience"):
            value = getattr(self, name)
            _check(value >= 0, f"optim.{name} must be >= 0, got {value}")
        for name in ("clip_grad_norm", "weight_noise", "weight_decay"):
            value = getattr(self, name)
            _check(
                math.isfinite(value) and value >= 0,
                f"optim.{name} must be a finite number >= 0, got {value}",
            )
        _check(0 <= self.ema < 1, f"optim.ema must be in [0, 1), got {self.ema}")
        _check(
            math.isfinite(self.max_minutes) and self.max_minutes >= 0,
            f"optim.max_minutes must be a finite number >= 0, got {self.max_minutes}",
        )


@dataclass
class RuntimeConfig:
    """``[run]``: seed, threads, device and the run folder; none of it changes the model."""

    seed: int = opt(0, "seed of the weights, the data order and dropout")
    threads: int = opt(0, "torch threads (0 = torch's default)")
    device: str = opt(
        "cpu",
        "cpu, cuda, cuda:N, or auto (cuda when available). The fused kernels run on the CPU; "
        "on a GPU the reference path runs (minGRU: the parallel scan)",
    )
    dtype: str = opt(
        "float32", "float32, or float64 (the model and the data: for exactness checks)"
    )
    out: str = opt("", "run folder (default runs/<task>-<data>-<variant>-<time>)")
    progress: bool = opt(True, "show a progress bar per epoch")
    dist_timeout: float = opt(
        300.0,
        "data-parallel runs (torchrun): seconds a rank waits for the others before the run "
        "fails with a clear error",
    )

    def validate(self) -> None:
        _check(0 <= self.seed < 2**63, f"run.seed must be in [0, 2**63), got {self.seed}")
        _check(0 <= self.threads <= 4096, f"run.threads must be in [0, 4096], got {self.threads}")
        resolve_device(self.device)
        _check(
            self.dtype in RUN_DTYPES,
            f"run.dtype must be one of {', '.join(RUN_DTYPES)}, got {self.dtype!r}",
        )
        _check(
            math.isfinite(self.dist_timeout) and self.dist_timeout > 0,
            f"run.dist_timeout must be a number of seconds > 0, got {self.dist_timeout}",
        )

    @property
    def torch_dtype(self) -> Any:
        """``dtype`` as a torch dtype."""
        import torch

        return getattr(torch, self.dtype)


#: ``run.dtype`` values
RUN_DTYPES: tuple[str, ...] = ("float32", "float64")


#: The sections common to every task; ``[task]`` is the task's own ``Config``.
SECTIONS: dict[str, type] = {
    "model": ModelConfig, "cell": CellConfig, "optim": OptimConfig, "run": RuntimeConfig,
}  # fmt: skip

#: Keys a resumed run may change; every other key must match the run's saved config.
RESUMABLE_KEYS = frozenset(
    {
        "optim.epochs",
        "optim.patience",
        "optim.max_minutes",
        "run.threads",
        "run.progress",
        "run.out",
        "run.device",
        "run.dist_timeout",
    }
)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_probability(name: str, value: float) -> None:
    _check(0 <= value < 1, f"{name} must be in [0, 1), got {value}")


def _check_cell(model: ModelConfig, cell: CellConfig) -> None:
    """``[cell]`` against ``model.variant``: an option the variant cannot run is refused."""
    try:
        cell.options().check(model.variant, owner="cell")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def resolve_device(name: str) -> Any:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``, checked against what this machine has."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device must be cpu, cuda, cuda:N or auto, got {name!r} ({exc})"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but this torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}")
    return device


@dataclass
class RunConfig:
    """A whole run: ``task`` (the task's own ``Config``), ``model``, ``cell``, ``optim``,
    ``run``."""

    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    cell: CellConfig = dataclasses.field(default_factory=CellConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def sections(self) -> dict[str, Any]:
        return {
            "task": self.task, "model": self.model, "cell": self.cell, "optim": self.optim,
            "run": self.run,
        }  # fmt: skip

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` of every key."""
        return {
            f"{s}.{k}": v
            for s, obj in self.sections().items()
            for k, v in C.config_to_dict(obj).items()
        }

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain data (as saved in a checkpoint's meta.json)."""
        return {s: C.config_to_dict(obj) for s, obj in self.sections().items()}

    def get(self, key: str) -> Any:
        section, name = key.split(".", 1)
        return getattr(self.sections()[section], name)

    def replace(self, **dotted: Any) -> RunConfig:
        """A copy with ``{"section.key": value}`` changed (checked as a config is)."""
        values = self.flat()
        values.update(dotted)
        return _assemble(values, "configuration")

    def to_toml(self) -> str:
        lines = ["# grukit run configuration (load it with --config)", ""]
        for section, obj in self.sections().items():
            lines.append(f"[{section}]")
            fields = C._fields(type(obj))
            for name, value in C.config_to_dict(obj).items():
                for help_line in fields[name].help.splitlines():
                    lines.append(f"# {help_line}".rstrip())
                lines.append(f"{name} = {C._toml_value(value)}")
            lines.append("")
        return "\n".join(lines)

    def save_toml(self, path: str | os.PathLike[str]) -> None:
        from grukit.io import atomic_write_text

        atomic_write_text(path, self.to_toml())

    def default_out(self) -> str:
        data = self.task.data
        data = Path(data).stem if ("/" in data or os.sep in data) else data
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return os.path.join("runs", f"{self.task.name}-{data}-{self.model.variant}-{stamp}")


# -- names ----------------------------------------------------------------------------------


def _task_fields() -> dict[str, C._Field]:
    """The union of every registered task's options (one type per name)."""
    found: dict[str, C._Field] = {}
    for name in REGISTRY:
        for key, f in C._fields(get_task(name).Config).items():
            if key in found and found[key].spec != f.spec:
                raise TypeError(f"task option {key!r} has two types across tasks")
            found.setdefault(key, f)
    return found


def short_names() -> dict[str, str]:
    """Short key -> ``section.key`` for every key whose name is unique across sections."""
    seen: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for key in C._fields(cls):
            seen.setdefault(key, []).append(f"{section}.{key}")
    for key in _task_fields():
        if key not in ("name", "data"):
            seen.setdefault(key, []).append(f"task.{key}")
    names = {k: v[0] for k, v in seen.items() if len(v) == 1}
    names.update({"task": "task.name", "data": "task.data"})
    return names


def _canonical(key: str, source: str) -> str:
    """``section.key`` of a dotted or short key (``-`` and ``_`` alike)."""
    key = key.replace("-", "_")
    if "." in key:
        return key
    names = short_names()
    if key in names:
        return names[key]
    raise C._unknown_keys_error(source, [key], sorted(names) + _dotted_keys())


def _dotted_keys(task_cls: Any = None) -> list[str]:
    keys = [f"{s}.{k}" for s, cls in SECTIONS.items() for k in C._fields(cls)]
    task_fields = C._fields(task_cls.Config) if task_cls is not None else _task_fields()
    return keys + [f"task.{k}" for k in task_fields]


# -- building -------------------------------------------------------------------------------


def _flatten(document: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Dotted keys of a TOML document or saved config: sections, dotted or short keys."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: keys must be strings, got {key!r}")
        if isinstance(value, Mapping):
            if key not in (*SECTIONS, "task"):
                raise ConfigError(
                    f"{source}: unknown section [{key}]; sections are: task, " + ", ".join(SECTIONS)
                )
            for inner, v in value.items():
                if not isinstance(inner, str):
                    raise ConfigError(f"{source}: keys must be strings, got {inner!r}")
                flat[f"{key}.{inner.replace('-', '_')}"] = v
        else:
            flat[_canonical(key, source)] = value
    return flat


def _assemble(values: Mapping[str, Any], source: str, *, none_token: bool = False) -> RunConfig:
    """Type-check dotted ``values`` (a complete or partial set) and build the RunConfig."""
    task_name = values.get("task.name", "music")
    if not isinstance(task_name, str):
        raise ConfigError(f"{source}: key 'task.name' expects str, got {task_name!r}")
    task_cls = get_task(task_name)
    classes = {"task": task_cls.Config, **SECTIONS}
    grouped: dict[str, dict[str, Any]] = {s: {} for s in classes}
    unknown = []
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in classes or name not in C._fields(classes[section]):
            unknown.append(key)
            continue
        spec = C._fields(classes[section])[name].spec
        grouped[section][name] = C._check_value(source, key, spec, value, none_token=none_token)
    if unknown:
        task_only = [k for k in unknown if k.startswith("task.") and k[5:] in _task_fields()]
        if task_only:
            options = ", ".join(f"task.{k}" for k in C._fields(task_cls.Config))
            raise ConfigError(
                f"{source}: {', '.join(task_only)} is not an option of task {task_name!r} "
                f"(its options: {options})"
            )
        raise C._unknown_keys_error(source, unknown, _dotted_keys(task_cls))
    built = {s: C._instantiate(cls, grouped[s], source) for s, cls in classes.items()}
    _check_cell(built["model"], built["cell"])
    return RunConfig(**built)


def _defaults(task_name: str) -> dict[str, Any]:
    task_cls = get_task(task_name)
    values = {
        f"{s}.{k}": f.default_value()
        for s, cls in SECTIONS.items()
        for k, f in C._fields(cls).items()
    }
    values.update({f"task.{k}": f.default_value() for k, f in C._fields(task_cls.Config).items()})
    values["task.name"] = task_name
    values.update(task_cls.defaults)
    return values


def _read_toml(path: Path) -> dict[str, Any]:
    document = C.read_toml_document(path)
    if set(document) == {"train"} and isinstance(document["train"], dict):
        document = document["train"]  # grukit 0.1 allowed all keys in one table
    flat = _flatten(document, str(path))
    # TOML has no null: "none" means None for optional keys
    return {k: (None if v == "none" else v) for k, v in flat.items()}


def build_run_config(
    *,
    toml_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    announce: Callable[[str], object] | None = print,
) -> RunConfig:
    """Resolve a run config: defaults, the task's defaults, a TOML file, then ``overrides``
    (``{"model.hidden_size": 46}`` or short ``{"hidden_size": 46}``). Each value that changes
    the one before it is announced as ``Overriding: key = value``."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if toml_path is not None:
        layers.append((str(toml_path), _read_toml(Path(toml_path))))
    if overrides:
        layers.append(("overrides", {_canonical(k, "overrides"): v for k, v in overrides.items()}))
    task_name = "music"
    for _, layer in layers:
        task_name = layer.get("task.name", task_name)
    if not isinstance(task_name, str):
        raise ConfigError(f"key 'task.name' expects str, got {task_name!r}")
    current = _defaults(task_name)
    for source, layer in layers:
        for key, value in layer.items():
            if key == "task.name":
                continue
            if announce is not None and (key not in current or not C._same(current[key], value)):
                announce(f"Overriding: {key} = {C._display(value)}")
            current[key] = value
        _assemble(current, source)  # name the layer that brought a bad value
    return _assemble(current, "configuration")


def make_config(**values: Any) -> RunConfig:
    """A run config from short keyword names (``make_config(task="music", hidden_size=8)``),
    silently; dotted keys go through :func:`build_run_config`'s ``overrides``."""
    return build_run_config(overrides=values, announce=None)


def run_config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> RunConfig:
    """A saved config: nested sections, or the flat layout of grukit 0.1 (migrated)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table of keys, got {type(data).__name__}")
    flat = _flatten(data, source)
    name = flat.get("task.name", "music")
    values = _defaults(name if isinstance(name, str) else "music")  # _assemble names a bad one
    values.update(flat)
    return _assemble(values, source)


# -- packaged configs -----------------------------------------------------------------------

CONFIG_DIR = Path(__file__).parent / "configs"


def packaged_configs() -> list[str]:
    """Names of the configs that ship with grukit (``--config NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def resolve_packaged(name: str | os.PathLike[str], folder: Path, what: str) -> Path:
    """A TOML file: ``name`` itself, or the one called ``name`` in the packaged ``folder``
    (``what``: "config", "space", named in the error that lists the packaged ones)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = folder / f"{path.stem}.toml"
    if path.parent == Path(".") and packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in folder.glob("*.toml")))
    raise ConfigError(
        f"no {what} file {str(name)!r}; give a TOML file or one of the packaged {what}s: {names}"
    )


def resolve_config_path(name: str) -> Path:
    """A TOML file: ``name`` itself, or the packaged config called ``name``."""
    return resolve_packaged(name, CONFIG_DIR, "config")


# -- command line ---------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = ()) -> None:
    """One flag per key: ``--section.key-name``, plus ``--key-name`` where the name is unique.

    Flags default to ``argparse.SUPPRESS``; collect them with :func:`overrides_from_namespace`.
    """
    excluded = set(exclude)
    shorts = {v: k for k, v in short_names().items()}
    entries: list[tuple[str, C._Field]] = [
        (f"{s}.{k}", f) for s, cls in SECTIONS.items() for k, f in C._fields(cls).items()
    ]
    entries += [(f"task.{k}", f) for k, f in _task_fields().items()]
    for dotted, f in entries:
        if dotted in excluded:
            continue
        flags = ["--" + dotted.replace("_", "-")]
        if dotted in shorts:
            flags.append("--" + shorts[dotted].replace("_", "-"))
        common: dict[str, Any] = {
            "dest": dotted,
            "default": argparse.SUPPRESS,
            "help": C._help_text(f) if not dotted.startswith("task.") else f.help,
        }
        spec = f.spec
        if spec.container is not None:
            parser.add_argument(
                *flags, nargs="*", type=C._scalar_parser(spec.scalar, spec.optional),
                metavar=C._SCALAR_NAMES[spec.scalar].upper(), action=C._SequenceAction,
                optional=spec.optional, **common,
            )  # fmt: skip
        elif spec.scalar is bool and not spec.optional:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(
                *flags, type=C._scalar_parser(spec.scalar, spec.optional),
                metavar=C._SCALAR_NAMES[spec.scalar].upper(), **common,
            )  # fmt: skip


def overrides_from_namespace(ns: argparse.Namespace) -> dict[str, Any]:
    """``{"section.key": value}`` for the run flags given in ``ns``."""
    return {k: v for k, v in vars(ns).items() if "." in k}
