"""Tests for the ``grukit`` command line: train, eval, sample, compare, and its error contract
(one line ``grukit <cmd>: error: ...`` on stderr, exit status 2, never a traceback).

Most calls run ``grukit.cli.main`` in this process (fast); a few run ``python -m grukit.cli``
in a subprocess to prove the entry point and its exit codes.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import assert_one_line_error

from grukit.checkpoint import read_meta
from grukit.cli import main
from grukit.runconfig import build_run_config, make_config
from grukit.tasks.music.midi import read_midi_roll

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def call(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    """Run ``grukit ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help, or a bad flag
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def run_process(*argv: Any, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grukit.cli", *(str(a) for a in argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def final(run: Path) -> dict[str, Any]:
    return json.loads((run / "final.json").read_text())


def train_args(data: Path, out: Path, *extra: Any) -> list[Any]:
    return ["train", "--data", data, "--hidden-size", 8, "--out", out, "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(tiny_pickle: Path, tmp_path_factory: pytest.TempPathFactory):
    """``grukit train ... --epochs 2 --seed 3``, run once: (status, stdout, stderr, run folder)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main([str(a) for a in train_args(tiny_pickle, run, "--epochs", 2, "--seed", 3)])
    return status, out.getvalue(), err.getvalue(), run


# ---------------------------------------------------------------------------- train


def test_train_prints_the_result_and_writes_a_sample(trained) -> None:
    status, out, err, run = trained
    assert status == 0, err
    result = final(run)
    assert f"test {result['test']['nll']:.4f}" in out, out
    assert f"run folder: {run}" in out, out
    assert result["epochs"] == 2
    assert read_meta(run / "checkpoints" / "last")["config"]["run"]["seed"] == 3
    midi, png = run / "samples" / "sample-seed3.mid", run / "samples" / "sample-seed3.png"
    assert str(midi) in out
    assert read_midi_roll(midi).shape == (64, 88), "the default sample is 64 frames"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert (run / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_config_file_then_flags(tiny_pickle: Path, tmp_path: Path, capsys) -> None:
    toml = tmp_path / "settings.toml"
    toml.write_text("hidden_size = 12\nepochs = 1\nlr = 0.01\nseed = 4\nbatch_size = 4\n")
    run = tmp_path / "run"
    status, out, err = call(
        capsys, "train", "--config", toml, "--hidden-size", 10, "--data", tiny_pickle,
        "--out", run, "--no-progress", "--sample-length", 0,
    )  # fmt: skip
    assert status == 0, err
    assert "Overriding: model.hidden_size = 10" in out
    expected = make_config(
        hidden_size=10, epochs=1, lr=0.01, seed=4, batch_size=4, data=str(tiny_pickle),
        out=str(run), progress=False, sample_length=0,
    )  # fmt: skip
    assert build_run_config(toml_path=run / "config.toml", announce=None) == expected, (
        "the run's config.toml is not defaults < TOML < flags"
    )
    assert not (run / "samples").exists(), "--sample-length 0 should draw no sample"


def test_an_unknown_toml_key_lists_the_valid_ones(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("hiden_size = 8\n")
    status, out, err = call(capsys, *train_args(tiny_pickle, tmp_path / "run", "--config", toml))
    assert status == 2
    assert_one_line_error(err, "train", "hiden_size", "did you mean 'hidden_size'", "valid keys")
    assert "hidden_size" in err.split("valid keys")[1] and "lr" in err.split("valid keys")[1]
    assert not (tmp_path / "run").exists()


def test_an_ill_typed_flag_is_an_argparse_error(capsys) -> None:
    status, out, err = call(capsys, "train", "--hidden-size", "abc")
    assert status == 2
    assert "--hidden-size" in err and "expected an integer, got 'abc'" in err, err


def test_a_missing_data_file_is_one_line(tmp_path: Path) -> None:
    # a real process: the console entry point and its exit status
    missing = tmp_path / "nowhere" / "music.pickle"
    proc = run_process("train", "--data", missing, "--out", tmp_path / "run", "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "train", "no such data file", str(missing))
    assert not (tmp_path / "run").exists()


def test_a_named_data_set_offline_says_to_use_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GRUKIT_CACHE", str(cache))

    def offline(*args: Any, **kwargs: Any) -> Any:  # what urlopen raises with no network
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    status, out, err = call(
        capsys, "train", "--data", "nottingham", "--out", tmp_path / "run", "--no-progress"
    )
    assert status == 2
    assert_one_line_error(err, "train", "nottingham", "--data")
    assert not [p for p in cache.rglob("*") if p.is_file()], "a partial download was left"


def test_resume_with_another_hidden_size_is_refused(trained, capsys) -> None:
    _, _, _, run = trained
    before = (run / "metrics.jsonl").read_text()
    status, out, err = call(capsys, "train", "--resume", run, "--hidden-size", 99)
    assert status == 2
    assert_one_line_error(err, "train", "hidden_size=99", "the run has 8")
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_refuses_a_config_file(trained, tmp_path: Path, capsys) -> None:
    _, _, _, run = trained
    toml = tmp_path / "c.toml"
    toml.write_text("epochs = 3\n")
    status, out, err = call(capsys, "train", "--resume", run, "--config", toml)
    assert status == 2
    assert_one_line_error(err, "train", "--resume", "--config")


def test_resume_with_more_epochs(trained, tmp_path: Path, capsys) -> None:
    _, _, _, original = trained
    run = tmp_path / "run"
    shutil.copytree(original, run)
    status, out, err = call(capsys, "train", "--resume", run, "--epochs", 3, "--sample-length", 0)
    assert status == 0, err
    assert "resuming" in out and "after epoch 2" in out, out
    epochs = [
        json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert epochs == [1, 2, 3]
    assert final(run)["epochs"] == 3


@pytest.mark.parametrize("ema", ["0", "0.9"])
def test_the_sample_after_training_uses_the_evaluated_weights(
    tiny_pickle: Path, tmp_path: Path, capsys, ema: str
) -> None:
    """The sample drawn at the end of ``train`` should come from the same weights as
    ``grukit sample RUN`` with the same seed and length: the best (EMA) checkpoint."""
    run = tmp_path / "run"
    status, _, err = call(
        capsys, *train_args(tiny_pickle, run, "--epochs", 3, "--lr", 0.03, "--seed", 0,
                            "--ema", ema, "--sample-length", 16),
    )  # fmt: skip
    assert status == 0, err
    status, _, err = call(capsys, "sample", run, "--length", 16, "--seed", 0, "--out", tmp_path)
    assert status == 0, err
    after_training = read_midi_roll(run / "samples" / "sample-seed0.mid")
    from_checkpoint = read_midi_roll(tmp_path / "sample-seed0.mid")
    assert np.array_equal(after_training, from_checkpoint), (
        f"with --ema {ema}, `grukit train` drew its closing sample from other weights than "
        "the best checkpoint that `grukit sample` (and eval) use: cli.py passes trainer.model, "
        "the raw last weights, instead of trainer.averaged"
    )


@pytest.mark.parametrize("ema", ["0", "0.9"])
def test_eval_and_sample_of_the_last_checkpoint(
    tiny_pickle: Path, tmp_path: Path, capsys, ema: str
) -> None:
    """``--checkpoint last`` (e.g. to look at a run still training) must work with --ema too,
    which is on by default."""
    run = tmp_path / "run"
    status, _, err = call(
        capsys, *train_args(tiny_pickle, run, "--epochs", 1, "--ema", ema, "--sample-length", 0)
    )
    assert status == 0, err
    status, out, err = call(capsys, "eval", run, "--checkpoint", "last", "--json")
    assert status == 0, (
        f"`grukit eval RUN --checkpoint last` fails for a run with --ema {ema}: {err.strip()}"
    )
    assert json.loads(out)["nll"] > 0
    status, _, err = call(capsys, "sample", run, "--checkpoint", "last", "--length", 4)
    assert status == 0, (
        f"`grukit sample RUN --checkpoint last` fails for a run with --ema {ema}: {err.strip()}"
    )


def test_a_packaged_config_by_name(tiny_pickle: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    status, _, err = call(
        capsys, *train_args(tiny_pickle, run, "--config", "chung2014", "--epochs", 1,
                            "--sample-length", 0),
    )  # fmt: skip
    assert status == 0, err
    saved = build_run_config(toml_path=run / "config.toml", announce=None)
    assert saved.optim.optimizer == "rmsprop" and saved.optim.weight_noise == 0.075
    assert saved.model.hidden_size == 8 and saved.optim.epochs == 1  # the flags win

    status, _, err = call(capsys, *train_args(tiny_pickle, tmp_path / "r2", "--config", "nope"))
    assert status == 2
    assert_one_line_error(err, "train", "nope", "chung2014")


# ---------------------------------------------------------------------------- eval, sample


def test_eval_json_is_one_object_with_final_json_nll(trained, capsys) -> None:
    _, _, _, run = trained
    status, out, err = call(capsys, "eval", run, "--split", "test", "--json")
    assert status == 0, err
    assert len(out.strip().splitlines()) == 1, f"expected one line of JSON, got:\n{out}"
    result = json.loads(out)
    assert result["nll"] == final(run)["test"]["nll"]
    assert result["split"] == "test" and result["checkpoint"] == "best"

    status, out, err = call(capsys, "eval", run, "--split", "all", "--json")
    assert status == 0, err
    result = json.loads(out)
    for split in ("train", "valid", "test"):
        assert result[split]["nll"] == final(run)[split]["nll"], split


def test_eval_of_a_truncated_checkpoint_is_one_line(trained, tmp_path: Path) -> None:
    _, _, _, original = trained
    run = tmp_path / "run"
    shutil.copytree(original, run)
    weights = run / "checkpoints" / "best" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    proc = run_process("eval", run, "--split", "test", "--json")
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "eval", str(weights), "truncated")
    assert proc.stdout == ""


def test_sample_writes_a_midi_file_of_the_asked_length(trained, tmp_path: Path, capsys) -> None:
    _, _, _, run = trained
    status, out, err = call(capsys, "sample", run, "--length", 10, "--out", tmp_path / "s")
    assert status == 0, err
    midi = tmp_path / "s" / "sample-seed0.mid"
    assert str(midi) in out
    roll = read_midi_roll(midi)
    assert roll.shape == (10, 88)
    assert set(np.unique(roll)) <= {0.0, 1.0}
    assert (tmp_path / "s" / "sample-seed0.png").read_bytes()[:8] == PNG_MAGIC


def test_sample_of_a_missing_run_is_one_line(tmp_path: Path, capsys) -> None:
    status, out, err = call(capsys, "sample", tmp_path / "nothing", "--length", 4)
    assert status == 2
    assert_one_line_error(err, "sample", "expected a run folder")


# ---------------------------------------------------------------------------- compare


def test_compare_json_with_an_extra_variant(tiny_pickle: Path, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    status, out, err = call(
        capsys, "compare", "--data", tiny_pickle, "--epochs", 1, "--json", "--no-progress",
        "--out", runs, "--variants", "mgu", "--lrs", "0.001,0.01",
    )  # fmt: skip
    assert status == 0, err
    report = json.loads(out)  # stdout holds the JSON only: the logs went to stderr
    models = {m["variant"]: m for m in report["models"]}
    assert list(models) == ["rnn_tanh", "lstm", "gru", "mgu"]
    assert [m["model"] for m in report["models"]][:3] == ["rnn_tanh-100", "lstm-36", "gru-46"]
    for m in report["models"]:
        for key in ("model", "parameters", "train_nll", "valid_nll", "test_nll"):
            assert key in m, f"{m.get('model')} lacks {key}"
        assert 0 < m["test_nll"] < 100 and 0 < m["train_nll"] < 100
        # each model keeps the learning rate whose run has the best validation NLL
        tried = {lr: final(runs / f"{m['model']}-lr{lr:g}") for lr in (0.001, 0.01)}
        best = min(tried, key=lambda lr: tried[lr]["valid"]["nll"])
        assert m["lr"] == best and m["valid_nll"] == tried[best]["valid"]["nll"], m
        assert m["test_nll"] == tried[best]["test"]["nll"]
    # Chung et al.'s GRU-46 on 88 keys: 3 * (88*46 + 46*46 + 2*46) + (46*88 + 88)
    assert models["gru"]["parameters"] == 22904
    ratio = models["mgu"]["parameters"] / models["gru"]["parameters"]
    assert 0.95 <= ratio <= 1.05, f"mgu is not sized to the gru: {ratio:.3f}"
    assert report["paper"] is None, "a synthetic file was matched to a benchmark"


def test_compare_only_trains_the_named_models_sized_as_in_the_whole_comparison(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    status, out, err = call(
        capsys, "compare", "--data", tiny_pickle, "--epochs", 1, "--json", "--no-progress",
        "--out", tmp_path / "runs", "--variants", "mgu", "--only", "mgu,lstm", "--lrs", "0.01",
    )  # fmt: skip
    assert status == 0, err
    report = json.loads(out)
    assert [m["variant"] for m in report["models"]] == ["lstm", "mgu"]
    assert report["models"][0]["model"] == "lstm-36"
    # the mgu is sized to the gru-46 that this process did not train
    assert 0.95 <= report["models"][1]["parameters"] / 22904 <= 1.05
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "lstm-36-lr0.01",
        report["models"][1]["model"] + "-lr0.01",
    ]


def test_compare_variant_with_units_resizes_the_tasks_own_model(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    status, out, err = call(
        capsys, "compare", "--data", tiny_pickle, "--epochs", 1, "--json", "--no-progress",
        "--out", tmp_path / "runs", "--variants", "gru:20,mgu", "--only", "gru,mgu",
        "--lrs", "0.01",
    )  # fmt: skip
    assert status == 0, err
    models = {m["variant"]: m for m in json.loads(out)["models"]}
    assert models["gru"]["model"] == "gru-20"  # not the task's gru-46
    # 3 * (88*20 + 20*20 + 2*20) + (20*88 + 88); the mgu is sized to it
    assert models["gru"]["parameters"] == 8448
    assert 0.95 <= models["mgu"]["parameters"] / 8448 <= 1.05


def test_compare_run_again_keeps_finished_runs_and_resumes_a_killed_one(
    tiny_pickle: Path, tmp_path: Path, capsys
) -> None:
    runs = tmp_path / "runs"
    args = [
        "compare", "--data", tiny_pickle, "--epochs", 2, "--json", "--no-progress", "--out",
        runs, "--only", "gru", "--lrs", "0.01", "--seeds", 2,
    ]  # fmt: skip
    status, out, err = call(capsys, *args)
    assert status == 0, err
    first = json.loads(out)
    seed0, seed1 = runs / "gru-46-lr0.01-seed0", runs / "gru-46-lr0.01-seed1"
    stamp = (seed0 / "final.json").stat().st_mtime_ns
    (seed1 / "final.json").unlink()  # as if the compare was killed before seed 1 finished
    status, out, err = call(capsys, *args)
    assert status == 0, err
    assert (seed0 / "final.json").stat().st_mtime_ns == stamp, "a finished run was retrained"
    assert final(seed1)["epochs"] == 2 and json.loads(out)["models"] == first["models"]
    # the same folders under other settings are refused, not overwritten
    status, out, err = call(capsys, *args, "--weight-noise", 0.2)
    assert status == 2 and "holds a finished run with other settings" in err
    assert "optim.weight_noise" in err and (seed0 / "final.json").stat().st_mtime_ns == stamp


def test_compare_table_of_a_task_without_a_test_split() -> None:
    from grukit.compare import format_table

    row = {
        "model": "gru-8", "parameters": 100, "lr": 0.01, "seeds": 1, "train_nll": 1.5,
        "train_nll_std": 0.0, "valid_nll": 1.75, "valid_nll_std": 0.0, "seconds_per_epoch": 0.5,
        "best_epoch": 3,
    }  # fmt: skip
    table = format_table({"task": "charlm", "data": "x", "monitor": "nll", "models": [row]})
    assert "| gru-8 | 100 | 0.01 | 1.5 | 1.75 | - | 0.50 | 3 |" in table


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--variants", "gru9"], ["gru9"]),
        (["--lrs", "fast"], ["--lrs", "fast"]),
        (["--only", "mgu"], ["--only", "mgu", "gru"]),
    ],
    ids=["variant", "lrs", "only"],
)
def test_compare_refuses_bad_arguments(
    tiny_pickle: Path, tmp_path: Path, capsys, flags: list[str], words: list[str]
) -> None:
    status, out, err = call(
        capsys, "compare", "--data", tiny_pickle, "--epochs", 1, "--no-progress",
        "--out", tmp_path / "runs", *flags,
    )  # fmt: skip
    assert status == 2
    assert_one_line_error(err, "compare", *words)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["sample"], ["compare"], ["bench"]])
def test_help_exits_zero(capsys, command: list[str]) -> None:
    status, out, err = call(capsys, *command, "--help")
    assert status == 0, err
    assert out.startswith("usage: grukit"), out[:200]


def test_the_console_script(tmp_path: Path) -> None:
    exe = shutil.which("grukit", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the grukit console script is not installed beside this python")
    proc = subprocess.run([exe, "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: grukit eval"), proc.stderr
    proc = subprocess.run(
        [exe, "eval", tmp_path / "nothing"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "eval", "expected a run folder")


def test_no_command_is_a_usage_error(capsys) -> None:
    status, out, err = call(capsys)
    assert status == 2
    assert "usage: grukit" in err
