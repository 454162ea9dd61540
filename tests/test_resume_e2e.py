"""End to end: ``grukit train`` killed with SIGKILL mid-training, then ``--resume``d, ends with
exactly the numbers of an uninterrupted run (dropout, weight noise and EMA on: they all use
the RNG), and no completed epoch is lost. Also: leftovers of an interrupted checkpoint save
(``checkpoints/last.tmp-*``, ``last.old-*``) do not break a resume.

The killed run goes through a small wrapper that sleeps in every training step (the numbers
are unchanged), so that the kill lands in the middle of an epoch after two complete ones.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from grukit.checkpoint import read_meta
from grukit.cli import main
from grukit.errors import CheckpointError
from grukit.runconfig import RunConfig, make_config
from grukit.train import Trainer

pytestmark = pytest.mark.slow

TIMING_KEYS = ("seconds", "seq_per_s", "elapsed_s")
EPOCHS = 8

WRAPPER = textwrap.dedent(
    """
    import os, sys, time

    import grukit.tasks.music.task as music

    delay = float(os.environ.get("GRUKIT_TEST_STEP_DELAY", "0"))
    real_loss = music.MusicTask.loss

    def slow_loss(self, model, batch):
        if model.training and delay:
            time.sleep(delay)  # a slow training step; the numbers are unchanged
        return real_loss(self, model, batch)

    music.MusicTask.loss = slow_loss

    from grukit.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)

# 2 layers (so the between-layer dropout is used), every source of randomness on, and a
# plateau schedule that may lower the rate mid-run (its state must survive the kill too)
TRAIN_FLAGS = [
    "--hidden-size", "12", "--num-layers", "2", "--batch-size", "2", "--lr", "0.01",
    "--dropout", "0.2", "--input-dropout", "0.1", "--output-dropout", "0.3",
    "--weight-noise", "0.05", "--ema", "0.9", "--plateau-patience", "1", "--seed", "7",
    "--sample-length", "0", "--no-progress",
]  # fmt: skip


def metrics_lines(run: Path) -> list[str]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [line for line in path.read_text().split("\n")[:-1]]  # complete lines only


def numbers(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in metrics_lines(run)]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def final_numbers(run: Path) -> dict[str, Any]:
    final = json.loads((run / "final.json").read_text())
    return {
        "nll": {split: final[split]["nll"] for split in ("train", "valid", "test")},
        "best_epoch": final["best_epoch"],
        "epochs": final["epochs"],
        "stopped_by": final["stopped_by"],
    }


def start(wrapper: Path, args: list[Any], delay: float) -> subprocess.Popen[str]:
    env = {**os.environ, "GRUKIT_TEST_STEP_DELAY": str(delay)}
    return subprocess.Popen(
        [sys.executable, str(wrapper), *(str(a) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str], what: str, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{out}\n{err}"
    return out


def make_leftovers(run: Path) -> None:
    """What a kill during a checkpoint save or a metrics write leaves behind."""
    for which in ("last", "best"):
        junk = run / "checkpoints" / f"{which}.tmp-0badc0de"
        junk.mkdir()
        (junk / "model.safetensors").write_bytes(b"\x00garbage" * 10)
        (junk / "meta.json").write_text('{"format": "grukit-checkpoint", "files": {"mod')
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 99, "lr": 0.0')  # a line cut short


@pytest.mark.parametrize("leftovers", [False, True], ids=["clean-kill", "with-leftovers"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(
    tiny_pickle: Path, tmp_path: Path, leftovers: bool
) -> None:
    wrapper = tmp_path / "slow_grukit.py"
    wrapper.write_text(WRAPPER)
    ref, run = tmp_path / "reference", tmp_path / "run"
    common = ["train", "--data", tiny_pickle, "--epochs", EPOCHS, *TRAIN_FLAGS]
    reference = start(wrapper, [*common, "--out", ref], delay=0.0)
    victim = start(wrapper, [*common, "--out", run], delay=0.04)  # >= 0.24 s per epoch

    try:
        deadline = time.monotonic() + 240
        while len(metrics_lines(run)) < 2:
            if victim.poll() is not None:
                out, err = victim.communicate()
                pytest.fail(f"the run ended before it could be killed:\n{out}\n{err}")
            assert time.monotonic() < deadline, "the run did not finish 2 epochs in 240 s"
            time.sleep(0.01)
        time.sleep(0.1)  # into epoch 3 (or its checkpoint): mid-training
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (run / "final.json").exists()

    done = read_meta(run / "checkpoints" / "last")["epoch"]  # the epochs the checkpoint holds
    before = metrics_lines(run)
    assert 2 <= done < EPOCHS and len(before) < EPOCHS, (done, len(before))
    if leftovers:
        make_leftovers(run)

    out = finish(start(wrapper, ["train", "--resume", run], delay=0.0), "the resume")
    assert f"after epoch {done}" in out, out
    finish(reference, "the uninterrupted run")

    after = metrics_lines(run)
    epochs = [json.loads(line)["epoch"] for line in after]
    assert epochs == list(range(1, EPOCHS + 1)), f"epochs lost or repeated: {epochs}"
    assert after[:done] == before[:done], "an epoch completed before the kill was run again"
    assert numbers(run) == numbers(ref), "the killed-and-resumed run differs per epoch"
    assert final_numbers(run) == final_numbers(ref), "the killed-and-resumed run ends elsewhere"
    # the next save of a checkpoint clears what interrupted saves of it left
    left = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("last"))
    assert left == ["last"], f"leftovers of interrupted saves remain: {left}"


# ---------------------------------------------------------------------------- in process


def config(data: Path, out: Path, epochs: int) -> RunConfig:
    return make_config(
        data=str(data), hidden_size=8, epochs=epochs, lr=0.03, batch_size=4, seed=2,
        weight_noise=0.05, ema=0.9, out=str(out), progress=False,
    )  # fmt: skip


def test_resume_after_a_kill_between_the_two_renames_of_a_save(
    tiny_pickle: Path, tmp_path: Path
) -> None:
    """A kill after ``last`` was renamed to ``last.old-*`` and before ``last.tmp-*`` took its
    place leaves no ``last``: resume falls back to the complete old copy, with a warning."""
    Trainer(config(tiny_pickle, tmp_path / "reference", 3), log=lambda s: None).fit()
    run = tmp_path / "run"
    Trainer(config(tiny_pickle, run, 2), log=lambda s: None).fit()
    checkpoints = run / "checkpoints"
    os.rename(checkpoints / "last", checkpoints / "last.old-0123abcd")
    (checkpoints / "last.tmp-0123abcd").mkdir()
    (checkpoints / "last.tmp-0123abcd" / "model.safetensors").write_bytes(b"half a file")

    with pytest.warns(RuntimeWarning, match="interrupted"):
        trainer = Trainer.resume(run, overrides={"epochs": 3}, log=lambda s: None)
    assert trainer.epoch == 2
    trainer.fit()
    assert final_numbers(run) == final_numbers(tmp_path / "reference")
    assert numbers(run) == numbers(tmp_path / "reference")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "last"]


def test_resume_with_only_a_half_written_save_fails_in_one_line(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    Trainer(config(tiny_pickle, run, 1), log=lambda s: None).fit()
    checkpoints = run / "checkpoints"
    shutil.rmtree(checkpoints / "last")
    (checkpoints / "last.tmp-0badc0de").mkdir()
    (checkpoints / "last.tmp-0badc0de" / "meta.json").write_text('{"form')
    with pytest.raises(CheckpointError, match="no complete checkpoints/last"):
        Trainer.resume(run, log=lambda s: None)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grukit train: error: ") and len(err.strip().splitlines()) == 1, err
    assert "last.tmp-0badc0de" in err
    # the finished run's results are not wiped by a fresh start either: it says so too
    assert main(["train", "--data", str(tiny_pickle), "--out", str(run), "--no-progress"]) == 2
    assert (run / "final.json").exists()
