"""``grukit tune``: hyperparameter search over any config key with Optuna (TPE, pruning).

A search space is a TOML file mapping config keys, spelled as in a run's ``config.toml``
(``section.key``), to a table::

    "optim.lr" = { low = 1e-4, high = 1e-2, log = true }     # float, log scale
    "model.hidden_size" = { low = 16, high = 256, step = 16 }  # int: low, high, step are ints
    "model.variant" = { choices = ["gru", "mgu"] }             # one of a list

(``[optim]`` then ``lr = { ... }`` says the same.) Every trial trains the base config with
the trial's values through :func:`objective`, reporting the task's watched metric after each
epoch so that a pruner can stop a bad trial early; its value is the best validation metric.

The study folder ``--out`` holds one run folder per trial (``trial-0000``, ...; a pruned
trial's folder stays, its checkpoints are valid), ``trials.csv`` (the results table),
``history.png`` (objective per trial and best so far) and ``best.toml`` (the best trial's
config: ``grukit train --config best.toml`` runs it as it is). With ``--storage URL``
(Optuna's RDB storage: ``sqlite:///study.db`` on one machine, PostgreSQL or MySQL for several)
a study resumes where it stopped and several processes can share it.

Optuna is an optional dependency (``pip install 'grukit[tune]'``), imported when a search runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from grukit import configuration as C
from grukit.errors import ConfigError, TrainingError
from grukit.runconfig import CONFIG_DIR, SECTIONS, RunConfig, _dotted_keys, short_names
from grukit.tasks import get_task
from grukit.tasks.base import Task

__all__ = [
    "SPACE_DIR",
    "Param",
    "format_table",
    "load_space",
    "objective",
    "packaged_spaces",
    "parse_space",
    "train_and_score",
    "tune",
]

#: Packaged search spaces (``--space NAME``); a folder of their own, so that
#: ``runconfig.packaged_configs()`` never lists a space as a run config.
SPACE_DIR = CONFIG_DIR / "spaces"

#: Keys a space may not search: the tuner owns them.
_NOT_SEARCHABLE = {
    "task.name": "a study searches one task; give it with --task",
    "run.out": "the tuner names each trial's run folder (--out DIR/trial-NNNN)",
}
_RANGE_KEYS = frozenset({"low", "high", "step", "log"})
MARKER = ".grukit-study"
MARKER_FORMAT = "grukit-study"
TABLE, PLOT, BEST = "trials.csv", "history.png", "best.toml"
_TRIAL_DIR = re.compile(r"^trial-(\d{4,})$")
_ATOMIC_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{8}$")  # left by grukit.io.atomic_write_*


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "grukit tune needs Optuna, which is not installed: pip install 'grukit[tune]' "
            "(or pip install 'optuna>=3.4')"
        ) from None
    return optuna


# -- the one objective ----------------------------------------------------------------------


def train_and_score(
    config: RunConfig,
    *,
    task: Task | None = None,
    log: Callable[[str], object] = print,
    report: Callable[[int, float], object] | None = None,
) -> tuple[float, dict[str, Any]]:
    """Train ``config`` and return ``(value, result)``: the best checkpoint's validation value
    of the task's watched metric and :meth:`grukit.train.Trainer.fit`'s whole result.

    ``report(epoch, value)`` is called after each epoch with that epoch's validation value (its
    checkpoints already saved); an exception it raises ends the run there. ``task`` is a loaded
    task to reuse (it must match ``config.task``); by default the config's own is loaded.
    This is what ``grukit tune``, ``grukit compare`` and ``benchmarks/jsb_search.py`` share.
    """
    from grukit.train import Trainer

    def on_epoch(row: dict[str, Any]) -> None:
        report(row["epoch"], row["valid_" + trainer.task.monitor])  # type: ignore[misc]

    trainer = Trainer(config, task=task, log=log, on_epoch=None if report is None else on_epoch)
    result = trainer.fit()
    return result["valid"][trainer.task.monitor], result


def objective(
    base_config: RunConfig,
    space: Mapping[str, Param],
    trial: Any,
    out: str | os.PathLike[str],
    *,
    task: Task | None = None,
    log: Callable[[str], object] = print,
) -> float:
    """One Optuna trial: ``base_config`` with the values ``trial`` suggests for ``space``,
    trained in ``out/trial-NNNN``; the watched validation metric is reported every epoch
    (``optuna.TrialPruned`` when the study's pruner says so) and the best one returned.

    The trial's user attributes record its run folder, resolved config and epochs."""
    optuna = _optuna()
    values = {key: param.suggest(trial) for key, param in space.items()}
    run = Path(out) / f"trial-{trial.number:04d}"
    config = base_config.replace(**values, **{"run.out": str(run)})
    trial.set_user_attr("run", str(run))
    trial.set_user_attr("config", config.to_dict())

    def report(epoch: int, value: float) -> None:
        trial.report(value, epoch)
        trial.set_user_attr("epochs", epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (value {value:.6g})")

    start = time.perf_counter()
    try:
        value, result = train_and_score(config, task=task, log=log, report=report)
    finally:
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
    trial.set_user_attr("best_epoch", result["best_epoch"])
    trial.set_user_attr("parameters", result["parameters"])
    return value


# -- the search space -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched key: a float or int range (``low``, ``high``, ``step``, ``log``) or a list
    of ``choices``."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.key, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list[Any]:
        """Every value of this key, for the grid sampler: the choices, or a stepped range."""
        if self.kind == "choice":
            return list(self.choices)
        if self.step is None or self.log:
            raise ConfigError(
                f"--sampler grid needs every key as choices or a stepped linear range; "
                f"{self.describe()} is continuous"
            )
        count = round((self.high - self.low) / self.step) + 1  # type: ignore[operator]
        values = [self.low + i * self.step for i in range(count)]  # type: ignore[operator]
        return [int(v) for v in values] if self.kind == "int" else [float(v) for v in values]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {list(self.choices)}"
        scale = ", log" if self.log else (f", step {self.step:g}" if self.step else "")
        return f"{self.key} in [{self.low:g}, {self.high:g}] ({self.kind}{scale})"


def packaged_spaces() -> list[str]:
    """Names of the search spaces that ship with grukit (``--space NAME``)."""
    return sorted(p.stem for p in SPACE_DIR.glob("*.toml"))


def _space_path(name: str | os.PathLike[str]) -> Path:
    from grukit.runconfig import resolve_packaged

    return resolve_packaged(name, SPACE_DIR, "space")


def load_space(name: str | os.PathLike[str], base: RunConfig) -> dict[str, Param]:
    """The space in TOML file ``name`` (or the packaged space ``name``), checked against
    ``base`` (its task's keys, each key's type and valid values)."""
    path = _space_path(name)
    return parse_space(C.read_toml_document(path), base, source=str(path))


def _entries(document: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``{"section.key": table}`` from top-level dotted keys or ``[section]`` tables."""
    found: dict[str, Any] = {}
    for key, value in document.items():
        if "." in key:
            found[key] = value
        elif key in (*SECTIONS, "task") and isinstance(value, Mapping) and not (
            set(value) & (_RANGE_KEYS | {"choices"})
        ):  # fmt: skip
            found.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            dotted = short_names().get(key)
            hint = f" (did you mean '{dotted}'?)" if dotted else ""
            raise ConfigError(
                f"{source}: key '{key}' is not a config key: spell it as in a run's "
                f"config.toml, section.key{hint}"
            )
    if not found:
        raise ConfigError(f"{source}: the space is empty; map at least one config key to a range")
    return found


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def parse_space(
    document: Mapping[str, Any], base: RunConfig, *, source: str = "space"
) -> dict[str, Param]:
    """Check a space document (see the module docstring) against ``base``'s task and return
    ``{"section.key": Param}``; a bad entry is a ConfigError naming the key and what was
    expected."""
    task_cls = get_task(base.task.name)
    classes = {"task": task_cls.Config, **SECTIONS}
    valid = _dotted_keys(task_cls)
    space: dict[str, Param] = {}
    for key, table in _entries(document, source).items():
        if key not in valid:
            raise C._unknown_keys_error(f"{source} (task {base.task.name!r})", [key], valid)
        if key in _NOT_SEARCHABLE:
            raise ConfigError(f"{source}: key '{key}' cannot be searched: {_NOT_SEARCHABLE[key]}")
        section, name = key.split(".", 1)
        spec = C._fields(classes[section])[name].spec
        where = f"{source}: key '{key}'"
        param = _param(key, table, spec, where)
        values = list(param.choices) if param.kind == "choice" else [param.low, param.high]
        for value in values:  # each bound and choice must make a valid config on its own
            try:
                base.replace(**{key: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {value!r} is not a valid value ({exc})") from None
        space[key] = param
    return space


def _param(key: str, table: Any, spec: Any, where: str) -> Param:
    expected = (
        "a table { low = ..., high = ... } (optionally step = ... or log = true) "
        "or { choices = [...] }"
    )
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} expects {expected}, got {table!r}")
    keys = set(table)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ConfigError(f"{where}: 'choices' takes no other keys, got {sorted(keys)}")
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        if spec.container is not None:
            raise ConfigError(
                f"{where} is a {spec.describe()}: a space searches only single values"
            )
        checked = []
        for choice in choices:
            if choice is None and spec.optional:
                checked.append(None)
                continue
            ok, value = C._check_scalar(spec.scalar, choice)
            if not ok:
                raise ConfigError(
                    f"{where} expects {spec.describe()} choices, got {choice!r} "
                    f"({type(choice).__name__})"
                )
            checked.append(value)
        if len(set(checked)) != len(checked):
            raise ConfigError(f"{where}: choices repeat a value: {choices!r}")
        return Param(key, "choice", choices=tuple(checked))
    if not keys <= _RANGE_KEYS or not {"low", "high"} <= keys:
        raise ConfigError(f"{where} expects {expected}, got keys {sorted(keys)}")
    if spec.container is not None or spec.scalar not in (int, float):
        raise ConfigError(
            f"{where} is a {spec.describe()} key: a low/high range needs an int or float key; "
            "give { choices = [...] }"
        )
    integer = spec.scalar is int
    kind = "int" if integer else "float"
    low, high, step, log = table["low"], table["high"], table.get("step"), table.get("log", False)
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is None:
            continue
        if not _number(value, integer):
            raise ConfigError(
                f"{where} is an {kind} key: {name} must be a finite {kind}, got {value!r} "
                f"({type(value).__name__})"
            )
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: empty range: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got low = {low}")
    if step is not None:
        if not step > 0:
            raise ConfigError(f"{where}: step must be positive, got {step}")
        if log and (not integer or step != 1):
            raise ConfigError(f"{where}: a log range takes no step (got step = {step})")
        count = (high - low) / step
        if abs(count - round(count)) > 1e-9 * max(1.0, count):
            raise ConfigError(
                f"{where}: step {step} does not divide the range [{low}, {high}] "
                f"(high - low = {high - low:g})"
            )
    if not integer:
        low, high, step = float(low), float(high), None if step is None else float(step)
    return Param(key, kind, low=low, high=high, step=step, log=log)


# -- the study folder -----------------------------------------------------------------------


def _is_ours(name: str) -> bool:
    m = _ATOMIC_TMP.match(name)
    plain = m["name"] if m else name
    return plain in (MARKER, TABLE, PLOT, BEST) or bool(_TRIAL_DIR.match(name) and not m)


def _read_marker(folder: Path) -> dict[str, Any] | None:
    from grukit.io import read_regular_file

    path = folder / MARKER
    if not os.path.lexists(path):
        return None
    try:
        marker = json.loads(read_regular_file(path, max_bytes=64 << 10).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        marker = None
    if not (isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT):
        raise ConfigError(f"{path} is not a grukit study marker; choose another --out")
    return marker


def _claim_folder(folder: Path, study_name: str, *, stored: bool, previous_trials: int) -> None:
    """Make ``folder`` this study's folder: new or empty, or one this study already wrote.

    Refused: a file, a symbolic link, a folder holding anything grukit did not write, one of
    another study, and earlier trials' folders a new study's trial numbers would reuse."""
    from grukit.io import atomic_write_json

    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        raise ConfigError(f"{folder} is not a real folder; --out takes a folder for the study")
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    foreign = [n for n in names if not _is_ours(n)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ConfigError(
            f"{folder} holds files grukit did not write (e.g. {shown}); choose an empty or new "
            "--out for the study"
        )
    marker = _read_marker(folder) if names else None
    if names and marker is None:
        raise ConfigError(f"{folder} holds study files but no {MARKER}; choose another --out")
    if marker is not None and marker.get("study") != study_name:
        raise ConfigError(
            f"{folder} holds the study {marker.get('study')!r}, not {study_name!r}; "
            "choose another --out or pass --study with that name"
        )
    trials = [n for n in names if _TRIAL_DIR.match(n)]
    if trials and not (stored and previous_trials):
        raise ConfigError(
            f"{folder} holds the trials of an earlier search ({trials[0]}, ...); resume it "
            "with the --storage it was run with, or choose another --out"
        )
    folder.mkdir(parents=True, exist_ok=True)
    if marker is None:  # two workers may both write it: the same content, atomically
        atomic_write_json(folder / MARKER, {"format": MARKER_FORMAT, "version": 1,
                                            "study": study_name})  # fmt: skip


def _storage(optuna: Any, url: str | None) -> Any:
    """Optuna's RDB storage for ``url`` (None: in memory). SQLite waits for a busy database
    instead of failing, and creating the schema is retried: workers may start together."""
    if url is None:
        return None
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    last: Exception | None = None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:  # sqlalchemy's errors (a bad URL, a race creating tables)
            last = exc
            racing = ("already exists", "locked", "UNIQUE constraint", "IntegrityError")
            if not any(word in str(exc) for word in racing):
                break
            time.sleep(0.2 * (attempt + 1))
    raise ConfigError(f"--storage {url}: cannot open the study storage ({last})")


def _pruner(optuna: Any, name: str, *, startup: int, warmup: int, epochs: int) -> Any:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup), max_resource=epochs)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner must be median, hyperband or none, got {name!r}")


# -- the search -----------------------------------------------------------------------------


def tune(
    *,
    space: str | os.PathLike[str] | Mapping[str, Any],
    trials: int,
    config: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    out: str | os.PathLike[str] = "runs/tune",
    storage: str | None = None,
    study: str | None = None,
    seed: int = 0,
    pruner: str | Any = "median",
    pruner_startup_trials: int = 5,
    pruner_warmup_epochs: int = 0,
    sampler: str = "tpe",
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Run ``trials`` trials of a search (see the module docstring) and write the table, plot
    and best config into ``out``.

    ``space`` is a space file, a packaged space's name or a parsed document; ``config`` and
    ``overrides`` make the base config (as ``grukit train --config FILE --flags``). ``study``
    names the study (default: ``out``'s folder name); with ``storage`` it is created or resumed
    (its trial numbers continue) and may be shared by several processes, each running its own
    ``trials``. ``pruner`` is ``"median"``, ``"hyperband"``, ``"none"`` or an Optuna pruner.
    ``sampler`` is ``"tpe"`` (Optuna's TPE, seeded by ``seed``) or ``"grid"``: every
    combination of the keys' values once, in an order drawn from ``seed`` (each key given as
    choices or a stepped range; the study ends when the grid is done).

    Returns ``{"study", "task", "monitor", "direction", "trials", "complete", "pruned",
    "failed", "best_value", "best_trial", "best_params", "best_run", "best_config", "table",
    "plot", "rows"}``; ``best_*`` are None while no trial has completed.
    """
    from grukit.tasks import load_task
    from grukit.train import config_from_args

    optuna = _optuna()
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= 1_000_000:
        raise ConfigError(f"--trials must be an integer in [1, 1000000], got {trials!r}")
    for name, value in (("startup-trials", pruner_startup_trials),
                        ("warmup-epochs", pruner_warmup_epochs)):  # fmt: skip
        if not 0 <= value <= 1_000_000:
            raise ConfigError(f"--pruner-{name} must be in [0, 1000000], got {value}")
    base = config_from_args(config, overrides or {}, announce=log)
    params = parse_space(space, base) if isinstance(space, Mapping) else load_space(space, base)
    out = Path(out)
    name = study or out.resolve().name
    task = load_task(base.task, progress=base.run.progress)
    monitor, mode = task.monitor, task.modes[task.monitor]
    direction = "maximize" if mode == "max" else "minimize"
    epochs = max([base.optim.epochs] + [
        int(p.high if p.kind != "choice" else max(p.choices)) for k, p in params.items()
        if k == "optim.epochs"
    ])  # fmt: skip
    if isinstance(pruner, str):
        pruner = _pruner(
            optuna, pruner, startup=pruner_startup_trials, warmup=pruner_warmup_epochs,
            epochs=epochs,
        )  # fmt: skip
    if sampler == "tpe":
        chosen = optuna.samplers.TPESampler(seed=seed)
    elif sampler == "grid":
        grid = {key: p.grid() for key, p in params.items()}
        chosen = optuna.samplers.GridSampler(grid, seed=seed)
    else:
        raise ConfigError(f"--sampler must be tpe or grid, got {sampler!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # grukit logs each trial itself
    the_study = optuna.create_study(
        study_name=name, storage=_storage(optuna, storage), load_if_exists=storage is not None,
        sampler=chosen, pruner=pruner, direction=direction,
    )  # fmt: skip
    if the_study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {name!r} in {storage} is to {the_study.direction.name.lower()}, but task "
            f"{task.name!r}'s {monitor} is to {direction}; choose another --study"
        )
    attrs = the_study.user_attrs
    if attrs.get("grukit_task", task.name) != task.name or attrs.get(
        "grukit_monitor", monitor
    ) != monitor:  # fmt: skip
        raise ConfigError(
            f"study {name!r} searched task {attrs.get('grukit_task')!r} "
            f"({attrs.get('grukit_monitor')}), not {task.name!r}; choose another --study"
        )
    the_study.set_user_attr("grukit_task", task.name)
    the_study.set_user_attr("grukit_monitor", monitor)
    _claim_folder(out, name, stored=storage is not None, previous_trials=len(the_study.trials))
    log(
        f"study {name!r}: {trials} trials of {task.name} ({direction} valid {monitor}) over "
        + "; ".join(p.describe() for p in params.values())
        + (f"; {len(the_study.trials)} trials already in {storage}" if the_study.trials else "")
    )
    shared = None if any(k.startswith("task.") for k in params) else task  # task keys: reload

    def run_trial(trial: Any) -> float:
        log(f"== trial {trial.number} ==")
        return objective(base, params, trial, out, task=shared, log=log)

    def after(study_: Any, trial: Any) -> None:
        state = trial.state.name.lower()
        text = f"trial {trial.number} {state}"
        if trial.value is not None:
            text += f": valid {monitor} {trial.value:.6g}"
        elif trial.intermediate_values:
            last = max(trial.intermediate_values)
            text += f" after epoch {last} (valid {monitor} {trial.intermediate_values[last]:.6g})"
        try:
            best = study_.best_trial
            text += f"; best so far {best.value:.6g} (trial {best.number})"
        except ValueError:  # no trial has completed yet
            pass
        log(text)

    try:
        the_study.optimize(
            run_trial, n_trials=trials, catch=(ConfigError, TrainingError), callbacks=[after],
            gc_after_trial=False,
        )  # fmt: skip
    except KeyboardInterrupt:  # the trials finished so far are still reported
        _write_results(the_study, base, params, out, task.name, monitor, direction)
        raise
    return _write_results(the_study, base, params, out, task.name, monitor, direction)


def _write_results(
    study: Any,
    base: RunConfig,
    params: Mapping[str, Param],
    out: Path,
    task_name: str,
    monitor: str,
    direction: str,
) -> dict[str, Any]:
    from grukit.io import atomic_write_text
    from grukit.runconfig import run_config_from_dict

    trials = study.get_trials(deepcopy=False)
    keys = list(params) + sorted({k for t in trials for k in t.params} - set(params))
    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower(), "value": t.value}
        row.update({k: t.params.get(k) for k in keys})
        row["epochs"] = t.user_attrs.get("epochs")
        row["best_epoch"] = t.user_attrs.get("best_epoch")
        row["seconds"] = t.user_attrs.get("seconds")
        row["run"] = t.user_attrs.get("run")
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(rows[0]) if rows else ["trial"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    atomic_write_text(out / TABLE, buf.getvalue())
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    report: dict[str, Any] = {
        "study": study.study_name, "task": task_name, "monitor": monitor, "direction": direction,
        "trials": len(trials), "complete": len(complete),
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "failed": sum(t.state.name == "FAIL" for t in trials),
        "best_value": None, "best_trial": None, "best_params": None, "best_run": None,
        "best_config": None, "table": str(out / TABLE), "plot": None, "rows": rows,
    }  # fmt: skip
    if complete:
        best = study.best_trial
        saved = best.user_attrs.get("config")
        config = (
            run_config_from_dict(saved, source=f"trial {best.number}")
            if saved else base.replace(**best.params)
        )  # fmt: skip
        config = config.replace(**{"run.out": ""})  # a new run folder: the trial's holds a run
        header = (
            f"# the best trial of grukit tune study {study.study_name!r}: trial {best.number}, "
            f"valid {monitor} {best.value:.6g} ({direction}); run it with "
            f"grukit train --config {out / BEST}\n"
        )
        atomic_write_text(out / BEST, header + config.to_toml())
        report.update(
            best_value=best.value, best_trial=best.number, best_params=dict(best.params),
            best_run=best.user_attrs.get("run"), best_config=str(out / BEST),
        )  # fmt: skip
    try:
        _plot_history(trials, out / PLOT, monitor=monitor, direction=direction)
        report["plot"] = str(out / PLOT)
    except Exception:  # noqa: BLE001 - a figure must never cost a finished search
        pass
    return report


def _plot_history(trials: list[Any], path: Path, *, monitor: str, direction: str) -> None:
    """Objective per trial (pruned trials at their last reported value) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grukit.io import atomic_write_bytes

    done = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.number)
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.intermediate_values]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.scatter([t.number for t in done], [t.value for t in done], label="completed trial",
               color="tab:blue", zorder=3)  # fmt: skip
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="tab:grey",
                   label="pruned (last reported)", zorder=3)  # fmt: skip
    if done:
        pick = max if direction == "maximize" else min
        best, xs, ys = None, [], []
        for t in done:
            best = t.value if best is None else pick(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {monitor} ({'higher' if direction == 'maximize' else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def format_table(report: Mapping[str, Any]) -> str:
    """A Markdown table of :func:`tune`'s trials, the best one marked."""
    rows = report["rows"]
    keys = [k for k in (rows[0] if rows else {}) if "." in k]
    head = "| trial | state | valid " + report["monitor"] + " | " + " | ".join(keys)
    head += (" | " if keys else "") + "epochs | s |"
    rule = "|---:|---|---:|" + "---:|" * len(keys) + "---:|---:|"

    def show(v: Any) -> str:
        return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    lines = [
        f"study {report['study']}: {report['trials']} trials ({report['complete']} complete, "
        f"{report['pruned']} pruned, {report['failed']} failed), {report['direction']} valid "
        f"{report['monitor']}",
        "",
        head,
        rule,
    ]
    for r in rows:
        mark = " *" if r["trial"] == report["best_trial"] else ""
        cells = [str(r["trial"]) + mark, r["state"], show(r["value"])] + [show(r[k]) for k in keys]
        cells += [show(r["epochs"]), show(r["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    if report["best_config"]:
        lines += ["", f"best: trial {report['best_trial']}, valid {report['monitor']} "
                  f"{report['best_value']:.6g}; config {report['best_config']}"]  # fmt: skip
    return "\n".join(lines)
