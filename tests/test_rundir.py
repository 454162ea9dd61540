"""Tests for grukit.rundir: run folders are grukit's own, locked, and their metrics never lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from grukit import rundir
from grukit.checkpoint import save_checkpoint
from grukit.errors import CheckpointError
from grukit.rundir import (
    LOCK,
    MARKER,
    RunFolderError,
    RunLock,
    append_metrics,
    check_fresh,
    check_resumable,
    claim,
    is_run_folder,
    read_metrics,
    restore_metrics,
    write_metrics,
)

fcntl = pytest.importorskip("fcntl")


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry below ``folder`` with its bytes (None for folders)."""
    out: dict[str, bytes | None] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = None if path.is_dir() else path.read_bytes()
    return out


def save_last(run: Path, which: str = "last", epoch: int = 1) -> None:
    torch.manual_seed(0)
    save_checkpoint(
        run / "checkpoints" / which, model=nn.Linear(2, 2), meta={"epoch": epoch}, rng=False
    )


def metrics_text(epochs: int) -> str:
    return "".join(
        json.dumps({"epoch": e, "train_loss": 1.0 / e}) + "\n" for e in range(1, epochs + 1)
    )


# -- claim ----------------------------------------------------------------------------------


def test_claim_new_and_empty_folders_write_the_marker_first(tmp_path):
    run = tmp_path / "a" / "b" / "run"
    claim(run, resume=False)
    assert sorted(os.listdir(run)) == [MARKER]
    marker = json.loads((run / MARKER).read_text())
    assert marker["format"] == "grukit-run" and marker["version"] == 1 and marker["created"]
    empty = tmp_path / "empty"
    empty.mkdir()
    check_fresh(empty)
    assert os.listdir(empty) == []  # checking writes nothing
    claim(empty, resume=False)
    assert is_run_folder(empty) and not is_run_folder(tmp_path / "nowhere")


def test_claim_refuses_a_folder_with_user_files_and_leaves_them_identical(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "config.toml").write_text("my own config\n")
    (run / "final.json").write_text('{"mine": 1}\n')
    (run / "metrics.jsonl").write_text("not grukit's\n")
    (run / "notes.txt").write_text("hello")
    (run / "samples").mkdir()
    (run / "samples" / "sample-seed0.mid").write_bytes(b"MThd")
    before = snapshot(run)
    for call in (lambda: claim(run, resume=False), lambda: check_fresh(run)):
        with pytest.raises(RunFolderError) as err:
            call()
        message = str(err.value)
        assert str(run) in message and "notes.txt" in message and "\n" not in message
        assert "grukit did not write" in message
    with pytest.raises(RunFolderError, match="holds files grukit did not write"):
        RunLock(run).acquire()  # no lock file is left in a foreign folder either
    with pytest.raises(RunFolderError, match="not a grukit run folder"):
        claim(run, resume=True)
    assert snapshot(run) == before


def test_claim_refuses_files_symlinks_and_a_folder_holding_only_known_names(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        claim(tmp_path / "file", resume=False)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(RunFolderError, match="symbolic link"):
        claim(tmp_path / "link", resume=False)
    assert os.listdir(tmp_path / "real") == []
    only = tmp_path / "only"
    only.mkdir()
    (only / "config.toml").write_text("a user's config, not grukit's\n")
    with pytest.raises(RunFolderError, match=r"did not write \(e\.g\. config\.toml\)"):
        claim(only, resume=False)
    assert (only / "config.toml").read_text() == "a user's config, not grukit's\n"


def test_claim_of_a_marked_folder_with_a_complete_run(tmp_path):
    run = tmp_path / "run"
    claim(run, resume=False)
    save_last(run)
    (run / "metrics.jsonl").write_text(metrics_text(1))
    with pytest.raises(RunFolderError, match=r"already holds a run; continue it with `grukit"):
        claim(run, resume=False)
    claim(run, resume=True)  # fine
    check_resumable(run)


def test_legacy_run_without_marker(tmp_path):
    run = tmp_path / "old"
    save_last(run)
    (run / "config.toml").write_text("[model]\n")
    (run / "metrics.jsonl").write_text(metrics_text(1))
    assert is_run_folder(run)
    with pytest.raises(RunFolderError, match="already holds a run"):
        claim(run, resume=False)
    assert not (run / MARKER).exists()
    check_resumable(run)
    assert not (run / MARKER).exists()
    claim(run, resume=True)
    assert (run / MARKER).is_file()
    # a legacy-looking folder with a foreign file is not a run
    other = tmp_path / "other"
    save_last(other)
    (other / "thesis.tex").write_text("x")
    with pytest.raises(RunFolderError, match="not a grukit run folder"):
        claim(other, resume=True)


def first_epoch_kill(tmp_path: Path) -> Path:
    """What a kill during the first epoch leaves: the marker, a partial checkpoint save."""
    run = tmp_path / "run"
    claim(run, resume=False)
    (run / "config.toml").write_text("[model]\n")
    partial = run / "checkpoints" / "last.tmp-1234abcd"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    return run


def test_first_epoch_kill_resume_hint_then_fresh_claim_removes_only_leftovers(tmp_path):
    run = first_epoch_kill(tmp_path)
    (run / "metrics.jsonl").write_text(metrics_text(1))
    (run / ".config.toml.tmp-0badc0de").write_text("half")
    for call in (lambda: claim(run, resume=True), lambda: check_resumable(run)):
        with pytest.raises(RunFolderError) as err:
            call()
        message = str(err.value)
        assert "no complete checkpoint" in message and f"grukit train --out {run}" in message
        assert "\n" not in message
    check_fresh(run)
    assert (run / "checkpoints" / "last.tmp-1234abcd").exists()  # checking removes nothing
    claim(run, resume=False)
    assert sorted(os.listdir(run)) == [MARKER, "checkpoints"]
    assert os.listdir(run / "checkpoints") == []


def test_first_epoch_kill_after_best_was_saved(tmp_path):
    run = first_epoch_kill(tmp_path)
    save_last(run, "best", epoch=1)
    claim(run, resume=False)
    assert os.listdir(run / "checkpoints") == []


def test_fresh_claim_keeps_anything_it_does_not_recognise(tmp_path):
    run = first_epoch_kill(tmp_path)
    (run / "checkpoints" / "mine.txt").write_text("x")
    (run / "data.csv").write_text("1,2\n")
    before = snapshot(run)
    with pytest.raises(RunFolderError, match="grukit did not write"):
        claim(run, resume=False)
    assert snapshot(run) == before
    # results without a checkpoint to continue from are not removed either
    run2 = first_epoch_kill(tmp_path / "two")
    (run2 / "final.json").write_text("{}")
    before = snapshot(run2)
    with pytest.raises(RunFolderError, match="no complete checkpoints/last"):
        claim(run2, resume=False)
    assert snapshot(run2) == before


def test_resume_claim_of_a_missing_folder_and_a_broken_marker(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        claim(tmp_path / "nothing", resume=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).write_text("garbage")
    with pytest.raises(RunFolderError, match="not a grukit run marker"):
        claim(run, resume=False)


def test_symlinked_checkpoints_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    save_last(elsewhere)
    run = tmp_path / "run"
    claim(run, resume=False)
    (run / "checkpoints").symlink_to(elsewhere / "checkpoints")
    with pytest.raises(CheckpointError, match="symbolic link"):
        claim(run, resume=True)


# -- the lock -------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from grukit.rundir import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_second_process_is_refused_naming_the_holder_until_it_is_killed(tmp_path):
    run = tmp_path / "run"
    claim(run, resume=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError) as err:
            RunLock(run).acquire()
        message = str(err.value)
        assert f"PID {holder.pid}" in message and str(run) in message
        assert "in use by another grukit process" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    with RunLock(run) as lock:
        assert lock.held
        assert (run / LOCK).read_text().strip() == str(os.getpid())
    assert not lock.held


def test_lock_is_released_on_an_exception_and_is_exclusive_within_a_process(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ZeroDivisionError), RunLock(run):
        assert (run / LOCK).is_file()
        with pytest.raises(RunFolderError, match=f"PID {os.getpid()}"):
            RunLock(run).acquire()
        1 / 0  # noqa: B018
    RunLock(run).acquire().release()
    with pytest.raises(RunFolderError, match="does not exist"):
        RunLock(tmp_path / "absent", create=False).acquire()


# -- metrics --------------------------------------------------------------------------------


def test_metrics_missing_and_complete(tmp_path):
    assert read_metrics(tmp_path, epochs=0) == []
    (tmp_path / "metrics.jsonl").write_text(metrics_text(3))
    assert [r["epoch"] for r in read_metrics(tmp_path, epochs=3)] == [1, 2, 3]


def test_metrics_bad_first_line_is_an_error_not_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    text = "this is not json\n" + metrics_text(3)
    path.write_text(text)
    with pytest.raises(RunFolderError) as err:
        read_metrics(tmp_path, epochs=3)
    assert "line 1" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(RunFolderError):
        restore_metrics(tmp_path, epochs=3)
    assert path.read_text() == text  # never rewritten from a partial read


def test_metrics_line_without_an_epoch_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"loss": 2}\n{"epoch": 3}\n')
    with pytest.raises(RunFolderError, match="line 2 should be a JSON object with an integer"):
        read_metrics(tmp_path, epochs=3)


def test_metrics_cut_short_last_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(metrics_text(2) + '{"epoch": 3, "train_lo')
    assert [r["epoch"] for r in read_metrics(tmp_path, epochs=2)] == [1, 2]
    append_metrics(tmp_path, {"epoch": 3, "train_loss": 0.3})  # starts a line of its own
    assert [r["epoch"] for r in read_metrics(tmp_path, epochs=3)] == [1, 2, 3]


def test_metrics_rows_past_the_checkpoint_are_dropped_and_gaps_refused(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(metrics_text(5))
    assert [r["epoch"] for r in read_metrics(tmp_path, epochs=3)] == [1, 2, 3]
    assert path.read_text() == metrics_text(5)  # reading writes nothing
    rows = restore_metrics(tmp_path, epochs=3)
    assert path.read_text() == metrics_text(3) and len(rows) == 3
    with pytest.raises(RunFolderError, match=r"expected epochs 1\.\.4"):
        read_metrics(tmp_path, epochs=4)
    path.write_text('{"epoch": 1}\n{"epoch": 3}\n{"epoch": 2}\n')
    with pytest.raises(RunFolderError, match="line 2 holds epoch 3, expected epoch 2"):
        read_metrics(tmp_path, epochs=3)
    with pytest.raises(RunFolderError, match="epochs >= 0"):
        read_metrics(tmp_path, epochs=-1)


def test_write_and_append_metrics(tmp_path):
    write_metrics(tmp_path, [{"epoch": 1, "x": 1.5}])
    append_metrics(tmp_path, {"epoch": 2, "x": float("nan")})
    rows = read_metrics(tmp_path, epochs=2)
    assert rows[0] == {"epoch": 1, "x": 1.5} and rows[1]["epoch"] == 2
    # a complete row that only lost its newline is kept, and appending keeps it
    (tmp_path / "metrics.jsonl").write_text(metrics_text(1) + '{"epoch": 2}')
    append_metrics(tmp_path, {"epoch": 3})
    assert [r["epoch"] for r in read_metrics(tmp_path, epochs=3)] == [1, 2, 3]


def test_metrics_must_be_a_regular_file(tmp_path):
    (tmp_path / "target").write_text(metrics_text(1))
    (tmp_path / "metrics.jsonl").symlink_to(tmp_path / "target")
    with pytest.raises(CheckpointError, match="symbolic link"):
        read_metrics(tmp_path, epochs=1)
    os.unlink(tmp_path / "metrics.jsonl")
    os.mkfifo(tmp_path / "metrics.jsonl")
    with pytest.raises(CheckpointError, match="FIFO"):
        read_metrics(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="not a regular file"):
        append_metrics(tmp_path, {"epoch": 1})


def test_module_exports():
    for name in rundir.__all__:
        assert hasattr(rundir, name), name
