"""Tasks: a data set, the model that fits it, and its metric, one module each.

A task provides ``input_size``/``output_size``, ``build_model(...)``, ``batches(split, ...)``,
``loss(model, batch) -> (summed loss, count)``, ``frames(split)`` and a ``metric`` name; the
trainer (:mod:`grukit.train`) needs nothing else.
"""

from __future__ import annotations

from typing import Any

from grukit.errors import ConfigError

TASKS = ("music",)


def load_task(name: str, data: str, *, progress: bool = True) -> Any:
    """The task ``name`` on data set ``data`` (a named data set or a local path)."""
    if name == "music":
        from grukit.tasks.music.task import MusicTask

        return MusicTask.from_spec(data, progress=progress)
    raise ConfigError(f"unknown task {name!r}; valid tasks are: {', '.join(TASKS)}")
