"""Issue 8, one test per defect: a run folder never loses or clobbers a user's data, and every
failure of the CLI is one line ``grukit CMD: error: ...`` with exit status 2.

Most calls run ``grukit.cli.main`` in this process (an exception escaping it would be the
traceback); the cases that could hang, race or need the real exit status run
``python -m grukit.cli`` in a subprocess with a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import assert_one_line_error

import grukit
from grukit.cli import main

TINY = ["--hidden-size", "8", "--batch-size", "4", "--no-progress"]


# -- helpers --------------------------------------------------------------------------------


def call(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """Run ``grukit ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def run_process(*argv: Any, timeout: float = 120, script: Path | None = None, **kw: Any):
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", "grukit.cli"]
    return subprocess.run(
        [*command, *(str(a) for a in argv)], capture_output=True, text=True, timeout=timeout, **kw
    )


def snapshot(folder: Path) -> dict[str, Any]:
    """Every entry below ``folder``: files by content, symlinks by target, folders by name."""
    found: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = path.read_bytes()
    return found


def metrics_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def copy_run(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    lock = dest / ".grukit-lock"
    if lock.exists():
        lock.unlink()
    return dest


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_pickle: Path) -> Path:
    """A finished 2-epoch run (with a sample); tests work on copies of it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    status = main(
        ["train", "--data", str(tiny_pickle), "--out", str(run), "--epochs", "2",
         "--sample-length", "8", *TINY]
    )  # fmt: skip
    assert status == 0
    return run


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    return copy_run(finished_run, tmp_path / "run")


# -- 1. a folder holding user files ---------------------------------------------------------


def test_1_train_out_on_a_folder_with_user_files_refuses_and_changes_nothing(
    tiny_pickle: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mine"
    (folder / "samples").mkdir(parents=True)
    (folder / "config.toml").write_text("# my own settings\nhidden_size = 3\n")
    (folder / "final.json").write_text('{"mine": true}\n')
    (folder / "metrics.jsonl").write_text('{"epoch": 1, "note": "my own"}\n')
    (folder / "curves.png").write_bytes(b"not grukit's picture")
    (folder / "samples" / "sample-seed0.mid").write_bytes(b"my midi")
    (folder / "notes.txt").write_text("do not touch\n")
    before = snapshot(folder)
    proc = run_process(
        "train", "--data", tiny_pickle, "--out", folder, "--epochs", "1", *TINY, timeout=180
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "train", str(folder))
    assert snapshot(folder) == before, "grukit changed, added or removed files in a user's folder"


# -- 2. a bad first line of metrics.jsonl ---------------------------------------------------


def test_2_resume_with_a_bad_first_metrics_line_refuses_and_keeps_the_file(
    run_copy: Path, capsys
) -> None:
    metrics = run_copy / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    assert len(lines) == 2
    metrics.write_text("this is not JSON\n" + "".join(lines))  # 3 lines, the first bad
    before = metrics.read_bytes()
    config = (run_copy / "config.toml").read_bytes()
    status, out, err = call(capsys, "train", "--resume", run_copy, "--epochs", 3)
    assert status == 2, err
    assert_one_line_error(err, "train", "metrics.jsonl", "line 1")
    assert metrics.read_bytes() == before, "the metrics history was rewritten from a bad read"
    assert (run_copy / "config.toml").read_bytes() == config


# -- 3. two processes on one folder ---------------------------------------------------------

# Runs grukit; the first training step of epoch GRUKIT_TEST_HOLD_EPOCH announces itself in the
# file GRUKIT_TEST_WAITING, then waits (at most a minute) for the file GRUKIT_TEST_GO.
HOLDING_WRAPPER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    import grukit.tasks.music.task as music
    import grukit.train as train

    hold = int(os.environ.get("GRUKIT_TEST_HOLD_EPOCH", "0"))
    real_epoch = train.Trainer.train_epoch

    def train_epoch(self, epoch):
        if epoch == hold:
            Path(os.environ["GRUKIT_TEST_WAITING"]).write_text(str(os.getpid()))
            go = Path(os.environ["GRUKIT_TEST_GO"])
            deadline = time.monotonic() + 60
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return real_epoch(self, epoch)

    train.Trainer.train_epoch = train_epoch

    from grukit.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


def test_3_a_second_train_on_a_folder_in_use_is_refused_naming_the_first_pid(
    tiny_pickle: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    wrapper = tmp_path / "holding_grukit.py"
    wrapper.write_text(HOLDING_WRAPPER)
    waiting, go = tmp_path / "waiting", tmp_path / "go"
    env = dict(
        os.environ,
        GRUKIT_TEST_HOLD_EPOCH="2",  # epoch 1 is saved: the folder holds a complete run
        GRUKIT_TEST_WAITING=str(waiting),
        GRUKIT_TEST_GO=str(go),
    )
    epochs = 3
    argv = ["train", "--data", str(tiny_pickle), "--out", str(run), "--epochs", str(epochs),
            "--sample-length", "0", *TINY]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, str(wrapper), *argv, "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not waiting.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting.exists(), f"the first run never reached epoch 2: {first.communicate()}"
        assert (run / ".grukit-lock").exists()
        started = time.monotonic()
        second = run_process(*argv, "--seed", "2", timeout=120)
        assert time.monotonic() - started < 60, "the second process was not refused at once"
        assert second.returncode == 2, second.stderr
        assert_one_line_error(second.stderr, "train", str(run), f"PID {first.pid}")
        assert first.poll() is None, "the first run ended while held"
    finally:
        go.write_text("go")
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert metrics_epochs(run) == list(range(1, epochs + 1))
    assert json.loads((run / "final.json").read_text())["seed"] == 1
    assert "best epoch" in out


# -- 4. symlinks, devices and FIFOs in a run folder -----------------------------------------


def test_4_eval_and_sample_refuse_links_devices_and_fifos(run_copy: Path, tmp_path: Path) -> None:
    weights = run_copy / "checkpoints" / "best" / "model.safetensors"
    saved = weights.read_bytes()

    weights.unlink()
    weights.symlink_to("/dev/zero")
    started = time.monotonic()
    proc = run_process("eval", run_copy, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "eval", "model.safetensors")
    assert time.monotonic() - started < 50

    weights.unlink()
    os.mkfifo(weights)
    proc = run_process("eval", run_copy, timeout=60)  # a hang is a TimeoutExpired failure
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "eval", "model.safetensors")

    weights.unlink()
    outside_weights = tmp_path / "outside.safetensors"
    outside_weights.write_bytes(saved)
    weights.symlink_to(outside_weights)  # the right bytes, but outside the run folder
    proc = run_process("eval", run_copy, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "eval", "model.safetensors", "symbolic link")
    weights.unlink()
    weights.write_bytes(saved)

    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(run_copy / "samples")
    (run_copy / "samples").symlink_to(outside, target_is_directory=True)
    proc = run_process("sample", run_copy, "--length", 4, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "sample", "samples")
    assert list(outside.iterdir()) == [], "grukit sample wrote outside the run folder"


# -- 5. a kill during the first epoch -------------------------------------------------------


def test_5_a_kill_in_the_first_epoch_is_no_dead_end(
    finished_run: Path, tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "last.tmp-0123abcd").mkdir(parents=True)
    shutil.copy(finished_run / ".grukit-run", run / ".grukit-run")
    shutil.copy(finished_run / "config.toml", run / "config.toml")
    (run / ".grukit-lock").write_text("12345\n")  # left by the killed process
    partial = (finished_run / "checkpoints" / "last" / "model.safetensors").read_bytes()
    (run / "checkpoints" / "last.tmp-0123abcd" / "model.safetensors").write_bytes(partial[:100])

    status, out, err = call(capsys, "train", "--resume", run)
    assert status == 2, err
    assert_one_line_error(err, "train", f"grukit train --out {run}")

    status, out, err = call(
        capsys, "train", "--data", tiny_pickle, "--out", run, "--epochs", 1,
        "--sample-length", 0, *TINY,
    )  # fmt: skip
    assert status == 0, err
    assert not (run / "checkpoints" / "last.tmp-0123abcd").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last"]
    assert metrics_epochs(run) == [1]


# -- 6. best without last -------------------------------------------------------------------


def test_6_eval_and_sample_of_best_work_without_last(run_copy: Path, capsys) -> None:
    shutil.rmtree(run_copy / "checkpoints" / "last")
    status, out, err = call(capsys, "eval", run_copy, "--json")
    assert status == 0, err
    assert json.loads(out)["nll"] > 0
    status, out, err = call(capsys, "sample", run_copy, "--length", 4, "--seed", 5)
    assert status == 0, err
    assert (run_copy / "samples" / "sample-seed5.mid").is_file()


# -- 7. one line, never a traceback ---------------------------------------------------------


def _read_only_parent(tmp_path: Path) -> Path:
    """A folder no run folder can be made in: a read-only folder, or as root (which ignores
    permissions) a folder under /sys (refused: EPERM) or else /proc."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    if not os.access(folder, os.W_OK):
        return folder
    folder.chmod(0o700)
    pseudo = Path("/sys") if Path("/sys").is_dir() else Path("/proc")
    return pseudo / "grukit-test-no-such-folder"


def _edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def _relist(folder: Path, name: str) -> None:
    """Update the size and sha256 of ``name`` listed in ``folder/meta.json``."""
    data = (folder / name).read_bytes()

    def edit(meta: dict[str, Any]) -> None:
        meta["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    _edit_json(folder / "meta.json", edit)


def _deep_meta(path: Path) -> None:
    text = path.read_text()
    assert text.rstrip().endswith("}")
    path.write_text(text.rstrip()[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _scheduler_edit(**changes: Any):
    """Change ``scheduler.json`` (a JSON that still parses) and list its new sha256 and size,
    so that only the state check can refuse it."""

    def edit(folder: Path) -> None:
        _edit_json(folder / "scheduler.json", lambda state: state.update(changes))
        _relist(folder, "scheduler.json")

    return edit


def _trainer_edit(edit):
    return lambda folder: _edit_json(folder / "meta.json", lambda meta: edit(meta["trainer"]))


# hand edits of checkpoints/last and words the refusal must name
META_EDITS = {
    "missing epoch": (_trainer_edit(lambda t: t.pop("epoch")), ["trainer.epoch", "missing"]),
    "string epoch": (_trainer_edit(lambda t: t.update(epoch="2")), ["trainer.epoch", "'2'"]),
    "negative epoch": (_trainer_edit(lambda t: t.update(epoch=-1)), ["trainer.epoch", "-1"]),
    "deep nesting": (lambda folder: _deep_meta(folder / "meta.json"), ["meta.json", "nested"]),
    "scheduler replaces its optimizer": (
        _scheduler_edit(optimizer=0),
        ["scheduler.json", "'optimizer'"],
    ),
    "scheduler sets an unknown attribute": (
        _scheduler_edit(evil_attribute=1),
        ["scheduler.json", "'evil_attribute'"],
    ),
    "scheduler value of the wrong type": (
        _scheduler_edit(patience="soon"),
        ["scheduler.json", "'patience'"],
    ),
}


def test_7_every_listed_failure_is_one_line_and_exit_2(
    finished_run: Path, tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    train = ["train", "--data", tiny_pickle, "--epochs", 1, "--sample-length", 0, *TINY]
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("mine\n")

    # -- a real process: the exit status and stderr of the console command
    for argv, words in [
        (["--out", _read_only_parent(tmp_path) / "run"], ["cannot create", "run"]),
        (["--out", a_file], [str(a_file)]),
        (["--out", a_file / "run"], [str(a_file)]),
        (["--lr", "1e38", "--out", tmp_path / "lr"], ["lr"]),
        (["--hidden-size", "100000000", "--out", tmp_path / "big"], ["hidden_size"]),
    ]:
        proc = run_process(*train, *argv, timeout=180)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert_one_line_error(proc.stderr, "train", *words)
    assert a_file.read_text() == "mine\n"
    assert not (tmp_path / "lr").exists() and not (tmp_path / "big").exists()

    # -- the CLI in this process (an exception escaping main() would be the traceback)
    for argv, words in [
        (["--backend", "scan", "--variant", "gru"], ["scan", "gru"]),
        (["--backend", "fused", "--variant", "lstm"], ["fused", "lstm"]),
    ]:
        out_dir = tmp_path / "-".join(argv).strip("-")
        status, _, err = call(capsys, *train, *argv, "--out", out_dir)
        assert status == 2, (argv, err)
        assert_one_line_error(err, "train", *words)
        assert not out_dir.exists(), "a refused value should be refused before anything is made"

    run = copy_run(finished_run, tmp_path / "sampled")
    before = snapshot(run)
    for argv, words in [
        (["--out", a_file], [str(a_file)]),
        (["--length", 0], ["--length"]),
        (["--temperature", "nan"], ["--temperature", "nan"]),
    ]:
        status, _, err = call(capsys, "sample", run, *argv)
        assert status == 2, (argv, err)
        assert_one_line_error(err, "sample", *words)
    assert snapshot(run) == before
    assert a_file.read_text() == "mine\n"

    # -- hand-edited checkpoints/last: --resume refuses, metrics.jsonl is untouched
    for name, (edit, words) in META_EDITS.items():
        run = copy_run(finished_run, tmp_path / name.replace(" ", "-"))
        edit(run / "checkpoints" / "last")
        metrics = (run / "metrics.jsonl").read_bytes()
        status, _, err = call(capsys, "train", "--resume", run, "--epochs", 3)
        assert status == 2, (name, err)
        line = assert_one_line_error(err, "train", "checkpoints/last", *words)
        assert "sha256" not in line, f"{name}: refused for the hash, not for its content"
        assert (run / "metrics.jsonl").read_bytes() == metrics, name


# -- 8. values that were silently accepted --------------------------------------------------


def test_8_values_once_silently_accepted_are_refused(
    run_copy: Path, tmp_path: Path, capsys
) -> None:
    elsewhere = tmp_path / "elsewhere"
    status, _, err = call(capsys, "train", "--resume", run_copy, "--out", elsewhere)
    assert status == 2, err
    assert_one_line_error(err, "train", "--out", str(elsewhere))
    assert not elsewhere.exists()

    config = (run_copy / "config.toml").read_bytes()
    metrics = (run_copy / "metrics.jsonl").read_bytes()
    status, _, err = call(capsys, "train", "--resume", run_copy, "--epochs", 1)
    assert status == 2, err
    assert_one_line_error(err, "train", "epochs=1", "2 epochs")
    assert (run_copy / "config.toml").read_bytes() == config
    assert (run_copy / "metrics.jsonl").read_bytes() == metrics

    before = snapshot(run_copy)
    for temperature in ("0", "-1", "inf"):
        status, _, err = call(capsys, "sample", run_copy, "--temperature", temperature)
        assert status == 2, (temperature, err)
        assert_one_line_error(err, "sample", "--temperature", temperature)
    assert snapshot(run_copy) == before

    with pytest.raises(ValueError, match="hidden_size"):
        grukit.count_parameters("gru", 4, -3)
    with pytest.raises(ValueError, match="input_size"):
        grukit.count_parameters("gru", -4, 3)
    with pytest.raises(ValueError, match="num_layers"):
        grukit.count_parameters("gru", 4, 3, num_layers=0)
    assert grukit.count_parameters("gru", 4, 3) == 3 * (3 * 4 + 3 * 3) + 2 * 3 * 3


# -- 9. a pickle bomb -----------------------------------------------------------------------


def test_9_a_pickle_bomb_is_refused_quickly_through_the_cli(tmp_path: Path) -> None:
    frame = (60, 64, 67)
    sequence = [frame] * 900
    bomb = {"train": [sequence] * 1000, "valid": [[frame]], "test": [[frame]]}  # 900,000 frames
    data = pickle.dumps(bomb, protocol=4)
    assert len(data) < 40_000
    path = tmp_path / "bomb.pickle"
    path.write_bytes(data)
    started = time.monotonic()
    proc = run_process(
        "train", "--data", path, "--out", tmp_path / "run", "--epochs", 1, *TINY, timeout=120
    )
    assert time.monotonic() - started < 60
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "train", "bomb.pickle", "pickle bomb")
    assert not (tmp_path / "run").exists()


# -- 10. what a short run evaluates ---------------------------------------------------------


def test_10_a_short_run_evaluates_the_model_it_trained(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    # 24 updates that train fast (the loss falls from ~61 to ~7): an average without a
    # warm-up would still be ~79% the initial weights (0.99 ** 24) and evaluate at ~39
    run = tmp_path / "run"
    status, _, err = call(
        capsys, "train", "--data", tiny_pickle, "--out", run, "--epochs", 2, "--ema", 0.99,
        "--weight-noise", 0, "--hidden-size", 8, "--batch-size", 1, "--lr", 0.05,
        "--sample-length", 0, "--seed", 0, "--no-progress",
    )  # fmt: skip
    assert status == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run / "final.json").read_text())
    trained, evaluated = rows[-1]["train_loss"], final["train"]["nll"]
    assert abs(evaluated - trained) <= 0.25 * trained, (
        f"the run trained to a loss of {trained:.3f} but its best checkpoint evaluates at "
        f"{evaluated:.3f} on the same data"
    )
