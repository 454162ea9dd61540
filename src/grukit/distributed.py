"""Data-parallel training over ``torchrun``: each rank trains on its shard of every global batch.

``torchrun --nproc-per-node N -m grukit train ...`` starts N processes; each reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` from its environment, joins one process group (gloo on CPU,
nccl on GPUs) and wraps the model in ``DistributedDataParallel``. One process (no torchrun, or
``WORLD_SIZE=1``) runs exactly as before.

Why the numbers equal a single process with the same global batch ``B``:

* ``optim.batch_size`` stays the *global* batch. Each rank asks the task for batches of
  ``b = B / N`` and keeps every N-th one, starting at its rank, so the N batches of step ``k``
  are consecutive chunks of the epoch's order (drawn from ``(seed, epoch)`` on every rank) and
  their union is the single process's batch ``k``. When the last group has fewer than N
  batches, the ranks without one run a batch with weight 0 (the collectives stay in step).
* A task's loss is ``(sum, count)``. Each step all-reduces the counts, and rank ``r``
  back-propagates ``N * sum_r / count``; DDP averages the gradients over the N ranks, which
  gives ``sum_r sum_r / count``: the single process's gradient of ``sum / count``.
* Evaluation shards the batches the same way and adds the task's additive statistics
  (:meth:`grukit.tasks.base.Task.eval_sums`) of all ranks before the metrics are formed.

Rank 0 alone writes the run folder (config, metrics, checkpoints, reports); every rank reads a
checkpoint on resume, so the run folder must be readable by all of them (one machine, or a
shared file system), and the number of processes may differ from the run's before. Dropout
masks and weight noise are drawn per rank from a generator seeded by ``(seed, epoch, rank)``.
A collective that does not complete within ``run.dist_timeout`` seconds (a rank died or hangs)
ends the run with a :class:`grukit.errors.TrainingError` that says so, instead of waiting
forever; torchrun then stops the other ranks.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from grukit.errors import ConfigError, GrukitError, TrainingError
from grukit.tasks.base import Batch, Task, add_sums

__all__ = ["Distributed", "world_from_env"]

T = TypeVar("T")


def world_from_env() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` as torchrun sets them (``(0, 1, 0)`` without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them), got "
            f"RANK={os.environ.get('RANK')!r} WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
            f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"expected 0 <= RANK < WORLD_SIZE, got RANK={rank} WORLD_SIZE={world}")
    return rank, world, local


@dataclass
class Distributed:
    """This process's place in a data-parallel run (``world == 1``: a single process)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    timeout_s: float = 300.0
    _owns_group: bool = False

    @property
    def active(self) -> bool:
        """Whether there are other ranks."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this rank writes the run folder and prints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device, *, timeout_s: float = 300.0) -> Distributed:
        """Join the process group torchrun describes in the environment (if any); on CUDA each
        rank takes the GPU of its local rank."""
        rank, world, local = world_from_env()
        if world == 1:
            return cls(device=device, timeout_s=timeout_s)
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        owns = not dist.is_initialized()
        if owns:
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise ConfigError(
                    f"WORLD_SIZE={world} but {' and '.join(missing)} not set: start "
                    "data-parallel training with torchrun --nproc-per-node N -m grukit train ..."
                )
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo",
                rank=rank,
                world_size=world,
                timeout=datetime.timedelta(seconds=timeout_s),
            )
        return cls(rank=rank, world=world, device=device, timeout_s=timeout_s, _owns_group=owns)

    def close(self) -> None:
        """Leave the process group this object joined."""
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False

    # ------------------------------------------------------------------ checks

    def local_batch_size(self, batch_size: int) -> int:
        """Each rank's share of the global ``batch_size``."""
        if batch_size % self.world:
            raise ConfigError(
                f"optim.batch_size is the global batch and must divide evenly over the "
                f"{self.world} processes, got {batch_size}"
            )
        return batch_size // self.world

    def check_task(self, task: Task) -> None:
        """Refuse a task whose batches cannot be split over ranks."""
        reason = getattr(task, "unshardable", None)
        if self.active and reason:
            raise ConfigError(f"task {task.name!r} cannot train data-parallel: {reason}")

    # ------------------------------------------------------------------ collectives

    def guard(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, whose collectives' failures (a peer died, the timeout passed) become one
        :class:`TrainingError` that says so."""
        if not self.active:
            return fn()
        try:
            return fn()
        except GrukitError:
            raise
        except RuntimeError as exc:  # gloo/nccl: a peer died, or the timeout passed
            raise TrainingError(
                f"rank {self.rank} of {self.world}: {what} did not complete within "
                f"run.dist_timeout = {self.timeout_s:g} s or a peer process left "
                f"(did another rank die? see its output): {str(exc).splitlines()[0]}"
            ) from None

    def sum(self, *values: float) -> list[float]:
        """``values`` summed over ranks (float64)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        self.guard("an all-reduce", lambda: dist.all_reduce(t))
        return t.tolist()

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a small picklable object of our own making)."""
        if not self.active:
            return value
        box = [value]
        self.guard("a broadcast", lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def run_on_main(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on rank 0; if it raises a grukit error, every rank raises it."""
        error: tuple[str, str] | None = None
        if self.main:
            try:
                fn()
            except GrukitError as exc:
                if not self.active:
                    raise
                error = (type(exc).__name__, str(exc))
                self.from_main(error)
                raise
        error = self.from_main(error)
        if error is not None:
            raise TrainingError(f"rank 0 stopped the run: {error[0]}: {error[1]}")

    def add_sums(self, sums: dict[str, Any]) -> dict[str, Any]:
        """The task's additive statistics of every rank, added in rank order (the values are
        numbers and numpy arrays from our own ranks; torch pickles them to send them)."""
        if not self.active:
            return sums
        parts: list[Any] = [None] * self.world
        self.guard("a gather", lambda: dist.all_gather_object(parts, sums))
        total: dict[str, Any] = {}
        for part in parts:
            add_sums(total, part)
        return total

    def broadcast_module(self, module: nn.Module) -> None:
        """Every tensor of ``module``'s state set to rank 0's, in place."""
        if not self.active:
            return
        for tensor in module.state_dict().values():
            self.guard("a broadcast", lambda t=tensor: dist.broadcast(t, src=0))

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # ------------------------------------------------------------------ model and batches

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (``model`` itself for one process)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return self.guard(
            "wrapping the model in DistributedDataParallel",
            lambda: DistributedDataParallel(model, device_ids=ids),
        )

    def train_batches(self, batches: Iterator[Batch]) -> Iterator[tuple[Batch, float]]:
        """``(batch, weight)``: this rank's batch of each group of ``world`` consecutive
        batches; a rank past the end of the last group repeats a batch with weight 0."""
        if not self.active:
            for batch in batches:
                yield batch, 1.0
            return
        group: list[Batch] = []
        for batch in batches:
            group.append(batch)
            if len(group) == self.world:
                yield group[self.rank], 1.0
                group = []
        if group:
            yield (group[self.rank], 1.0) if self.rank < len(group) else (group[-1], 0.0)

    def eval_batches(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """Every ``world``-th batch, starting at this rank's."""
        for i, batch in enumerate(batches):
            if i % self.world == self.rank:
                yield batch
