"""Data-parallel training (:mod:`grukit.distributed`): ``torchrun -m grukit train`` on 2 CPU
processes (gloo) gives the numbers of one process with the same global batch (float64, 1e-10),
resumes with another number of processes, and fails cleanly when a rank dies."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from grukit.distributed import Distributed, world_from_env
from grukit.errors import ConfigError
from grukit.runconfig import make_config
from grukit.train import Trainer

TIMING_KEYS = ("seconds", "seq_per_s", "elapsed_s")

FLAGS = [
    "--hidden-size", "10", "--num-layers", "2", "--batch-size", "4", "--lr", "0.01",
    "--weight-noise", "0", "--ema", "0", "--sample-length", "0", "--no-progress",
    "--dtype", "float64", "--threads", "1", "--seed", "3",
]  # fmt: skip


def grukit_cmd(*args: Any, procs: int = 1) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "grukit", *map(str, args)]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*run, "--nproc-per-node", str(procs), "-m", "grukit", *map(str, args)]


def run_ok(cmd: list[str], timeout: float = 240) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def rows(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines]


def finals(run: Path) -> dict[str, float]:
    final = json.loads((run / "final.json").read_text())
    return {split: final[split]["nll"] for split in ("train", "valid", "test")}


def assert_close(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y)
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-10, abs_tol=1e-10), (a, b)
    else:
        assert a == b


@pytest.fixture(scope="module")
def one_process(tiny_pickle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process run every data-parallel run is held to: 2 epochs."""
    out = tmp_path_factory.mktemp("one") / "run"
    run_ok(grukit_cmd("train", "--data", tiny_pickle, *FLAGS, "--epochs", "2", "--out", out))
    return out


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(
    one_process: Path, tiny_pickle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "two"
    stdout = run_ok(
        grukit_cmd("train", "--data", tiny_pickle, *FLAGS, "--epochs", "2", "--out", out, procs=2)
    )
    assert stdout.count("best epoch") == 1  # rank 0 alone reports
    assert_close(rows(out), rows(one_process))
    assert_close(finals(out), finals(one_process))
    # rank 0 alone wrote the folder: the same files as the single-process run's
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one_process.iterdir())


@pytest.mark.slow
def test_resume_with_another_number_of_processes(
    one_process: Path, tiny_pickle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run_ok(grukit_cmd("train", "--data", tiny_pickle, *FLAGS, "--epochs", "1", "--out", out))
    run_ok(grukit_cmd("train", "--resume", out, "--epochs", "2", procs=2))
    assert_close(rows(out), rows(one_process))
    assert_close(finals(out), finals(one_process))


DYING_RANK = textwrap.dedent(
    """
    import os, sys

    import grukit.tasks.music.task as music

    real_loss = music.MusicTask.loss

    def loss(self, model, batch):
        if model.training and os.environ["RANK"] == "1":
            os._exit(3)  # rank 1 dies in its first training step
        return real_loss(self, model, batch)

    music.MusicTask.loss = loss

    from grukit.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_dead_rank_ends_the_run_with_a_clear_error(tiny_pickle: Path, tmp_path: Path) -> None:
    """Started by hand (no torchrun to stop the others): rank 0 must not wait forever."""
    script = tmp_path / "dying.py"
    script.write_text(DYING_RANK)
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        args = ["train", "--data", tiny_pickle, *FLAGS, "--epochs", "2", "--dist-timeout", "30"]
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *map(str, args), "--out", str(tmp_path / "run")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )  # fmt: skip
        )
    start = time.monotonic()
    out, err = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=30)
    assert procs[1].returncode == 3
    assert procs[0].returncode == 2, (out, err)
    assert "did another rank die?" in err, err
    assert "Traceback" not in err
    assert time.monotonic() - start < 100


# ---------------------------------------------------------------------- in one process


class Numbered:
    def __init__(self, i: int) -> None:
        self.i, self.items = i, 1


@pytest.mark.parametrize("batches", [6, 7, 8, 1])
def test_each_step_gives_every_rank_one_batch_and_the_union_is_the_global_batch(
    batches: int,
) -> None:
    world = 3
    shards = [
        list(Distributed(rank=r, world=world).train_batches(iter(map(Numbered, range(batches)))))
        for r in range(world)
    ]
    steps = -(-batches // world)
    assert all(len(s) == steps for s in shards)  # the ranks stay in step
    for k in range(steps):
        real = sorted(s[k][0].i for s in shards if s[k][1] == 1.0)
        assert real == list(range(k * world, min(batches, (k + 1) * world)))
    for shard in shards:  # a padding batch carries weight 0
        assert all(w in (0.0, 1.0) for _, w in shard)
    evaluated = sorted(
        b.i
        for r in range(world)
        for b in Distributed(rank=r, world=world).eval_batches(iter(map(Numbered, range(batches))))
    )
    assert evaluated == list(range(batches))  # evaluation sees every batch once


def test_the_global_batch_must_divide_over_the_processes() -> None:
    assert Distributed(rank=0, world=4).local_batch_size(32) == 8
    with pytest.raises(ConfigError, match="divide evenly over the 3 processes, got 32"):
        Distributed(rank=0, world=3).local_batch_size(32)


def test_the_char_lm_is_refused_data_parallel() -> None:
    from grukit.tasks.charlm.task import CharLMTask

    with pytest.raises(ConfigError, match="carried state"):
        Distributed(rank=0, world=2).check_task(CharLMTask.__new__(CharLMTask))
    Distributed().check_task(CharLMTask.__new__(CharLMTask))  # one process: fine


def test_environment_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert world_from_env() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="must be integers"):
        world_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="0 <= RANK < WORLD_SIZE"):
        world_from_env()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT not set: start"):
        Distributed.from_env(torch.device("cpu"))


@pytest.mark.parametrize("data", ["tiny-music", "tiny-classify"])
def test_float64_runs_train_and_evaluate_in_float64(
    data: str, tiny_pickle: Path, tmp_path: Path
) -> None:
    if data == "tiny-music":
        config = make_config(
            data=str(tiny_pickle), hidden_size=6, epochs=1, batch_size=4, out=str(tmp_path / "r"),
            sample_length=0, progress=False, dtype="float64",
        )  # fmt: skip
    else:
        rng = np.random.default_rng(0)
        path = tmp_path / "set.npz"
        np.savez(
            path, x_train=rng.normal(size=(24, 7, 3)), y_train=rng.integers(0, 3, 24),
            x_test=rng.normal(size=(6, 7, 3)), y_test=rng.integers(0, 3, 6),
        )  # fmt: skip
        config = make_config(
            task="classify", data=str(path), hidden_size=6, epochs=1,
            batch_size=4, out=str(tmp_path / "r"), progress=False, dtype="float64",
        )  # fmt: skip
    trainer = Trainer(config, log=lambda _: None)
    assert all(p.dtype == torch.float64 for p in trainer.model.parameters())
    result = trainer.fit()
    assert math.isfinite(result["valid"][trainer.task.monitor])


def test_dtype_and_timeout_are_checked() -> None:
    with pytest.raises(ConfigError, match="run.dtype must be one of float32, float64"):
        make_config(dtype="float16")
    with pytest.raises(ConfigError, match="run.dist_timeout must be"):
        make_config(dist_timeout=0.0)
