"""Tasks: a data set, the model that fits it, its loss and metrics, one module each.

The contract is :class:`grukit.tasks.base.Task`. Adding a task means writing its module and one
line in :data:`REGISTRY` (``name: "module:Class"``, imported on first use).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from grukit.errors import ConfigError
from grukit.tasks.base import Task, TaskConfig

__all__ = ["REGISTRY", "TASKS", "Task", "TaskConfig", "get_task", "load_task"]

#: Task name -> ``module:class`` of its :class:`Task`.
REGISTRY: dict[str, str] = {
    "music": "grukit.tasks.music.task:MusicTask",
    "classify": "grukit.tasks.classify.task:ClassifyTask",
    "forecast": "grukit.tasks.forecast.task:ForecastTask",
    "charlm": "grukit.tasks.charlm.task:CharLMTask",
    "seq2seq": "grukit.tasks.seq2seq.task:Seq2SeqTask",
}

TASKS: tuple[str, ...] = tuple(REGISTRY)


def get_task(name: str) -> type[Task]:
    """The :class:`Task` class registered as ``name``."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown task {name!r}; valid tasks are: {', '.join(TASKS)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_task(
    config: TaskConfig | str,
    data: str | None = None,
    *,
    progress: bool = True,
    state: Mapping[str, Any] | None = None,
) -> Task:
    """The task a ``[task]`` config describes (or ``load_task("music", "jsb")``), data loaded."""
    if isinstance(config, str):
        cls = get_task(config)
        config = cls.Config(name=config, **({"data": data} if data is not None else {}))
    else:
        cls = get_task(config.name)
    return cls.load(config, progress=progress, state=state)
