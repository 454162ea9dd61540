"""Tests for grukit.checkpoint: exact resume, integrity checks, crash safety, no pickle."""

from __future__ import annotations

import ast
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import grukit.checkpoint as ckpt
from grukit.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from grukit.errors import CheckpointError


class TinyGRU(nn.Module):
    def __init__(self, hidden: int = 5) -> None:
        super().__init__()
        self.gru = nn.GRU(3, hidden, batch_first=True)
        self.drop = nn.Dropout(0.3)  # consumes the torch RNG during training
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(self.drop(out[:, -1]))


DATA_X = torch.linspace(-1, 1, 16 * 4 * 3).reshape(16, 4, 3)
DATA_Y = torch.arange(16) % 2


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def make(optimizer: str, scheduler: str, hidden: int = 5):
    model = TinyGRU(hidden)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-4)
    else:
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9, centered=True)
    if scheduler == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    elif scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=1e-4)
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def train(model, opt, sched, steps: int) -> None:
    """Batches from numpy, noise scale from `random`, dropout from torch: all three RNGs."""
    for _ in range(steps):
        idx = torch.from_numpy(np.random.choice(16, size=4, replace=False))
        x = DATA_X[idx] + random.random() * 0.01
        loss = nn.functional.cross_entropy(model(x), DATA_Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(1.0)  # never improves, so the LR keeps dropping
        else:
            sched.step()


def draws():
    return torch.rand(4), random.random(), np.random.rand(3)


def assert_same_params(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# -- atomic files ---------------------------------------------------------------------------


def test_atomic_writes(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")
    atomic_write_json(path, {"a": [1, 2.5], "é": None})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1, 2.5], "é": None}
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimizer", "scheduler"), [("adam", "step"), ("rmsprop", "cosine"), ("adam", "plateau")]
)
def test_resume_is_bit_identical(tmp_path, optimizer, scheduler):
    seed_all(0)
    model, opt, sched = make(optimizer, scheduler)
    train(model, opt, sched, 3)
    save_checkpoint(
        tmp_path / "last", model=model, optimizer=opt, scheduler=sched, meta={"step": 3}
    )
    train(model, opt, sched, 4)
    expected_draws = draws()

    seed_all(123)  # fresh objects with other weights and other RNG states
    model2, opt2, sched2 = make(optimizer, scheduler)
    meta = load_checkpoint(
        tmp_path / "last", model=model2, optimizer=opt2, scheduler=sched2, restore_rng=True
    )
    assert meta["step"] == 3
    train(model2, opt2, sched2, 4)

    assert_same_params(model, model2)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert sched2.state_dict() == sched.state_dict()
    got = draws()
    assert torch.equal(got[0], expected_draws[0])
    assert got[1] == expected_draws[1]
    assert np.array_equal(got[2], expected_draws[2])


def test_state_round_trip_keeps_types_and_infinities(tmp_path):
    model, opt, sched = make("adam", "plateau")
    assert sched.state_dict()["best"] == float("inf")  # no step taken yet
    save_checkpoint(tmp_path / "c", model=model, optimizer=opt, scheduler=sched, meta={})
    model2, opt2, sched2 = make("adam", "plateau")
    opt2.param_groups[0]["betas"] = (0.5, 0.5)
    load_checkpoint(tmp_path / "c", model=model2, optimizer=opt2, scheduler=sched2)
    assert sched2.state_dict() == sched.state_dict()
    assert opt2.param_groups[0]["betas"] == (0.8, 0.99)  # a tuple again, not a list
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]


def test_optimizer_state_tensors_have_stable_names(tmp_path):
    seed_all(0)
    model, opt, sched = make("adam", "step")
    train(model, opt, sched, 1)
    save_checkpoint(tmp_path / "c", model=model, optimizer=opt, meta={})
    structure = json.loads((tmp_path / "c" / "optimizer.json").read_text())
    first = structure["state"]["__dict__"][0]
    assert first[0] == 0
    assert first[1]["exp_avg"] == {"__tensor__": "state.0.exp_avg"}
    assert first[1]["step"] == {"__tensor__": "state.0.step"}


def test_meta_contents(tmp_path):
    model, _, _ = make("adam", "step")
    meta_in = {"config": {"layers": [1, 2], "lr": 0.1}, "epoch": 7, "best": float("inf")}
    save_checkpoint(tmp_path / "c", model=model, meta=meta_in, rng=False)
    meta = read_meta(tmp_path / "c")
    assert {k: meta[k] for k in meta_in} == meta_in
    assert meta["format_version"] == ckpt.FORMAT_VERSION
    assert set(meta["library_versions"]) == {"grukit", "torch", "numpy", "python"}
    assert set(meta["files"]) == {"model.safetensors"}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["meta.json", "model.safetensors"]
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(tmp_path / "c", optimizer=torch.optim.SGD(model.parameters(), lr=1))
    with pytest.raises(CheckpointError, match="no rng state"):
        load_checkpoint(tmp_path / "c", restore_rng=True)


def test_meta_is_checked_before_writing(tmp_path):
    model, _, _ = make("adam", "step")
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c", model=model, meta={"files": 1})
    with pytest.raises(TypeError, match=r"\['loss'\].*\.item\(\)"):
        save_checkpoint(tmp_path / "c", model=model, meta={"loss": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="set"):
        save_checkpoint(tmp_path / "c", model=model, meta={"x": {1, 2}})
    assert list(tmp_path.iterdir()) == []


def test_tied_weights_round_trip(tmp_path):
    def tied():
        m = nn.Sequential(nn.Embedding(6, 4), nn.Linear(4, 6, bias=False))
        m[1].weight = m[0].weight
        return m

    model = tied()
    save_checkpoint(tmp_path / "c", model=model, meta={})
    model2 = tied()
    load_checkpoint(tmp_path / "c", model=model2)
    assert_same_params(model, model2)


def test_load_does_not_unpickle(tmp_path, monkeypatch):
    seed_all(0)
    model, opt, sched = make("adam", "plateau")
    train(model, opt, sched, 1)
    save_checkpoint(tmp_path / "c", model=model, optimizer=opt, scheduler=sched, meta={})

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    model2, opt2, sched2 = make("adam", "plateau")
    load_checkpoint(
        tmp_path / "c", model=model2, optimizer=opt2, scheduler=sched2, restore_rng=True
    )
    assert_same_params(model, model2)


@pytest.mark.parametrize("module", [ckpt])
def test_source_uses_no_pickle(module):
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    unsafe_modules = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & unsafe_modules
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in unsafe_modules
        if isinstance(node, ast.Attribute) and node.attr in ("load", "loads"):
            base = ast.unparse(node.value)
            assert base in ("json", "safetensors.torch"), ast.unparse(node)


# -- corruption -----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    seed_all(0)
    model, opt, sched = make("adam", "step")
    train(model, opt, sched, 2)
    path = tmp_path / "last"
    save_checkpoint(path, model=model, optimizer=opt, scheduler=sched, meta={"epoch": 2})
    return path, model


def load_all(path):
    model, opt, sched = make("adam", "step")
    return load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, restore_rng=True)


@pytest.mark.parametrize(
    "name",
    [
        "model.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.json",
        "rng.safetensors",
        "rng.json",
    ],
)
def test_truncated_file_is_reported(saved, name):
    path, _ = saved
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{name}: truncated or corrupt"):
        load_all(path)


def test_flipped_byte_is_reported(saved):
    path, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt \(sha256"):
        load_all(path)


def test_truncated_or_invalid_meta_is_reported(saved):
    path, _ = saved
    data = (path / "meta.json").read_bytes()
    (path / "meta.json").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"meta\.json: invalid JSON"):
        load_all(path)
    with pytest.raises(CheckpointError, match=r"meta\.json: invalid JSON"):
        read_meta(path)
    (path / "meta.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match=r"meta\.json: not a grukit checkpoint"):
        load_all(path)


def test_missing_file_is_reported(saved):
    path, _ = saved
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors is missing"):
        load_all(path)
    (path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=r"meta\.json is missing"):
        load_all(path)


def rewrite_file_and_meta(path: Path, name: str, data: bytes) -> None:
    """Replace a file and fix its checksum in meta.json (a consistent but broken checkpoint)."""
    (path / name).write_bytes(data)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"][name] = {"size": len(data), "sha256": ckpt._sha256(data)}
    (path / "meta.json").write_text(json.dumps(meta))


def test_garbage_with_matching_checksum_is_reported(saved):
    path, _ = saved
    rewrite_file_and_meta(path, "model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        load_all(path)


def test_malformed_tags_are_reported(saved):
    path, _ = saved
    rewrite_file_and_meta(path, "optimizer.json", b'{"state": {"__tensor__": "nope"}}')
    with pytest.raises(CheckpointError, match=r"optimizer\.json: malformed __tensor__"):
        load_all(path)
    rewrite_file_and_meta(path, "scheduler.json", b'{"x": {"__float__": "huge"}}')
    with pytest.raises(CheckpointError, match=r"scheduler\.json: malformed __float__"):
        load_checkpoint(path, scheduler=make("adam", "step")[2])


def test_newer_format_is_refused(saved):
    path, _ = saved
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = ckpt.FORMAT_VERSION + 1
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="newer than this grukit supports"):
        read_meta(path)


def test_failed_load_leaves_objects_untouched(saved):
    path, _ = saved
    data = (path / "rng.json").read_bytes()
    (path / "rng.json").write_bytes(data[:100])
    seed_all(5)
    model, opt, sched = make("adam", "step")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    with pytest.raises(CheckpointError, match="rng.json"):
        load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, restore_rng=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.state_dict()["state"] == {}
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_shape_mismatch_lists_keys_and_shapes(saved):
    path, model = saved
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model=TinyGRU(hidden=6))
    message = str(info.value)
    assert "model.safetensors does not fit the model" in message
    assert "gru.weight_ih_l0 checkpoint [15, 3] vs model [18, 3]" in message
    assert "head.weight checkpoint [2, 5] vs model [2, 6]" in message

    other = nn.Sequential()
    other.add_module("gru", nn.GRU(3, 5, batch_first=True))
    other.add_module("extra", nn.Linear(1, 1))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model=other)
    message = str(info.value)
    assert "missing from the checkpoint: extra.weight [1, 1], extra.bias [1]" in message
    assert "not in the model: head.bias [2], head.weight [2, 5]" in message


def test_missing_checkpoint_and_non_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        read_meta(tmp_path / "nothing")
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not a grukit checkpoint"):
        save_checkpoint(run, model=nn.Linear(1, 1), meta={})
    assert (run / "log.txt").read_text() == "precious"


# -- crash safety ---------------------------------------------------------------------------


def first_weight(path: Path) -> torch.Tensor:
    model = nn.Linear(2, 2)
    load_checkpoint(path, model=model)
    return model.weight.detach().clone()


def two_models():
    old, new = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        old.weight.fill_(1.0)
        new.weight.fill_(2.0)
    return old, new


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_save_replaces_and_cleans_up(tmp_path):
    path = tmp_path / "last"
    old, new = two_models()
    save_checkpoint(path, model=old, meta={})
    (tmp_path / "last.tmp-0123abcd").mkdir()  # left by an earlier interrupted save
    save_checkpoint(path, model=new, meta={})
    assert torch.equal(first_weight(path), new.weight)
    assert leftovers(path) == []


def test_crash_while_writing_files_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last"
    old, new = two_models()
    save_checkpoint(path, model=old, optimizer=torch.optim.SGD(old.parameters(), lr=1), meta={})
    real = ckpt._write_new_file
    calls = []

    def dying(target, data):
        calls.append(target)
        if len(calls) == 3:
            real(target, data[: len(data) // 2])
            raise OSError("no space left on device")
        real(target, data)

    monkeypatch.setattr(ckpt, "_write_new_file", dying)
    with pytest.raises(OSError, match="no space"):
        save_checkpoint(path, model=new, optimizer=torch.optim.SGD(new.parameters(), lr=1), meta={})
    assert torch.equal(first_weight(path), old.weight)
    assert leftovers(path) == []


def test_crash_during_swap_rolls_back(tmp_path, monkeypatch):
    path = tmp_path / "last"
    old, new = two_models()
    save_checkpoint(path, model=old, meta={})
    real = os.rename
    calls = []

    def flaky(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # moving the new folder into place
            raise OSError("interrupted")
        real(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", flaky)
    with pytest.raises(OSError, match="interrupted"):
        save_checkpoint(path, model=new, meta={})
    assert calls[0][1].startswith("last.old-") and calls[1][0].startswith("last.tmp-")
    assert torch.equal(first_weight(path), old.weight)
    assert leftovers(path) == []


def test_swap_failure_without_rollback_is_recovered_on_load(tmp_path, monkeypatch):
    path = tmp_path / "last"
    old, new = two_models()
    save_checkpoint(path, model=old, meta={"n": 1})
    real = os.rename
    calls = []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) >= 2:  # the new folder cannot be moved in, nor the old one back
            raise OSError("interrupted")
        real(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", flaky)
    with pytest.raises(OSError):
        save_checkpoint(path, model=new, meta={"n": 2})
    monkeypatch.undo()
    assert not path.exists()
    assert [n.split("-")[0] for n in leftovers(path)] == ["last.old", "last.tmp"]
    with pytest.warns(RuntimeWarning, match="interrupted"):
        assert read_meta(path)["n"] == 2
    with pytest.warns(RuntimeWarning, match="last.tmp-"):
        assert torch.equal(first_weight(path), new.weight)
    save_checkpoint(path, model=new, meta={"n": 3})  # the next save tidies up
    assert read_meta(path)["n"] == 3
    assert leftovers(path) == []


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    import grukit.checkpoint as ckpt

    path, point = sys.argv[1], sys.argv[2]
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ckpt.save_checkpoint(path, model=model, meta={"n": 1})
    with torch.no_grad():
        model.weight.fill_(2.0)

    real_write, real_rename = ckpt._write_new_file, os.rename
    def write(target, data):
        if point == "write" and target.name == "meta.json":
            real_write(target, data[:20])
            os._exit(9)
        real_write(target, data)
    renames = []
    def rename(src, dst):
        renames.append(src)
        if point == "swap" and len(renames) == 2:
            os._exit(9)
        real_rename(src, dst)
    ckpt._write_new_file = write
    ckpt.os.rename = rename
    ckpt.save_checkpoint(path, model=model, meta={"n": 2})
    """
)


@pytest.mark.parametrize(("point", "survivor"), [("write", 1), ("swap", 2)])
def test_killed_save_leaves_a_complete_checkpoint(tmp_path, point, survivor):
    """A real kill (no exception handlers run) at the worst moments of a save."""
    path = tmp_path / "last"
    result = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(path), point], capture_output=True, timeout=120
    )
    assert result.returncode == 9, result.stderr.decode()
    assert leftovers(path)  # the kill left a folder behind
    expect = (
        pytest.warns(RuntimeWarning) if point == "swap" else warnings.catch_warnings(action="error")
    )
    with expect:
        assert read_meta(path)["n"] == survivor
        assert torch.equal(first_weight(path), torch.full((2, 2), float(survivor)))
    save_checkpoint(path, model=nn.Linear(2, 2), meta={"n": 3})
    assert read_meta(path)["n"] == 3 and leftovers(path) == []


# -- hostile files: symlinks, FIFOs, devices, deep nesting, states that set anything ---------


def _with_timeout(seconds: int, fn):
    """Run ``fn`` in a daemon thread; fail (never hang) when it takes longer."""
    import threading

    box: dict[str, BaseException | object] = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s (it would hang)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_symlink_to_dev_zero_is_refused_quickly(saved):
    path, _ = saved
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(CheckpointError) as err:
        _with_timeout(20, lambda: load_all(path))
    assert "model.safetensors" in str(err.value) and "symbolic link" in str(err.value)


def test_symlink_to_a_file_outside_is_refused(saved, tmp_path):
    path, _ = saved
    outside = tmp_path / "outside.safetensors"
    os.replace(path / "model.safetensors", outside)
    (path / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="symbolic link"):
        load_all(path)


@pytest.mark.parametrize("name", ["meta.json", "model.safetensors"])
def test_fifo_in_a_checkpoint_never_hangs(saved, name):
    path, _ = saved
    (path / name).unlink()
    os.mkfifo(path / name)
    with pytest.raises(CheckpointError) as err:
        _with_timeout(20, lambda: load_all(path))
    assert name in str(err.value) and "FIFO" in str(err.value)
    if name == "meta.json":
        with pytest.raises(CheckpointError, match="FIFO"):
            _with_timeout(20, lambda: read_meta(path))


def test_device_listed_size_is_compared_before_reading(saved):
    path, _ = saved
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["model.safetensors"]["size"] = 10**15  # a hand-edited size
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"truncated or corrupt \(\d+ bytes, expected"):
        _with_timeout(20, lambda: load_all(path))


def test_symlinked_checkpoint_folder_is_refused(saved, tmp_path):
    path, _ = saved
    link = tmp_path / "run" / "checkpoints" / "last"
    link.parent.mkdir(parents=True)
    link.symlink_to(path)
    for call in (lambda: read_meta(link), lambda: load_all(link)):
        with pytest.raises(CheckpointError, match="symbolic link"):
            call()


def test_deeply_nested_meta_is_refused(saved):
    path, _ = saved
    meta = json.loads((path / "meta.json").read_text())
    for depth in (150, 100_000):
        text = json.dumps(meta)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
        (path / "meta.json").write_text(text)
        with pytest.raises(CheckpointError, match=r"meta\.json: JSON nested \d+ levels deep"):
            read_meta(path)
    # brackets inside strings do not count
    text = json.dumps(meta)[:-1] + ', "s": "' + "[" * 500 + '\\"{"}'
    (path / "meta.json").write_text(text)
    assert read_meta(path)["s"] == "[" * 500 + '"{'


def test_oversized_meta_is_refused_before_reading(saved, monkeypatch):
    path, _ = saved
    monkeypatch.setattr(ckpt, "MAX_META_BYTES", 100)
    with pytest.raises(CheckpointError, match=r"meta\.json has \d+ bytes, expected at most 100"):
        read_meta(path)


def _rewrite_state(path: Path, name: str, edit) -> None:
    """Edit ``name`` (a JSON state file) and fix its size and sha256 in meta.json."""
    import hashlib

    state = json.loads((path / name).read_text())
    edit(state)
    data = (json.dumps(state) + "\n").encode()
    (path / name).write_bytes(data)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "meta.json").write_text(json.dumps(meta))


def test_scheduler_json_cannot_set_an_attribute_the_state_lacks(saved):
    path, _ = saved
    _rewrite_state(path, "scheduler.json", lambda s: s.update(optimizer="pwned"))
    model, opt, sched = make("adam", "step")
    with pytest.raises(CheckpointError, match=r"scheduler\.json.*'optimizer' is not part of"):
        load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    assert sched.optimizer is opt


@pytest.mark.parametrize(
    ("key", "value"), [("gamma", "half"), ("last_epoch", [1]), ("step_size", {"a": 1})]
)
def test_scheduler_json_cannot_change_a_type(saved, key, value):
    path, _ = saved
    _rewrite_state(path, "scheduler.json", lambda s: s.update({key: value}))
    model, opt, sched = make("adam", "step")
    with pytest.raises(CheckpointError, match=rf"scheduler\.json.*{key!r} should be number"):
        load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)


def test_scheduler_ints_and_floats_are_interchangeable(saved):
    path, _ = saved
    _rewrite_state(path, "scheduler.json", lambda s: s.update(gamma=1))
    model, opt, sched = make("adam", "step")
    load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    assert sched.gamma == 1


def _bad_param_ids(state):
    state["state"]["__dict__"][0][0] = 99


def _extra_group_key(state):
    state["param_groups"][0]["evil"] = 1


def _string_lr(state):
    state["param_groups"][0]["lr"] = "fast"


def _other_params(state):
    state["param_groups"][0]["params"] = [0, 0, 0, 0, 0, 0]


def _extra_top_key(state):
    state["extra"] = 1


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_bad_param_ids, "not a parameter id"),
        (_extra_group_key, "should have keys"),
        (_string_lr, r"\['lr'\] should be number, got str"),
        (_other_params, "other parameters"),
        (_extra_top_key, "exactly 'state' and 'param_groups'"),
    ],
)
def test_optimizer_json_must_have_the_optimizers_structure(saved, edit, words):
    path, _ = saved
    _rewrite_state(path, "optimizer.json", edit)
    model, opt, sched = make("adam", "step")
    before = json.dumps(opt.state_dict()["param_groups"])
    with pytest.raises(CheckpointError, match=rf"optimizer\.json: does not fit.*{words}"):
        load_checkpoint(path, model=model, optimizer=opt, scheduler=sched)
    assert json.dumps(opt.state_dict()["param_groups"]) == before


def test_optimizer_state_tensor_shapes_must_match(tmp_path):
    model, opt, sched = make("adam", "step")
    train(model, opt, sched, 1)
    save_checkpoint(tmp_path / "a", model=model, optimizer=opt, scheduler=sched)
    other, other_opt, other_sched = make("adam", "step", hidden=6)
    with pytest.raises(CheckpointError, match="does not fit the optimizer"):
        load_checkpoint(tmp_path / "a", optimizer=other_opt)


@pytest.mark.parametrize(
    ("trainer", "words"),
    [
        (None, "expected a 'trainer' table"),
        ({"best_valid": 1.0, "best_epoch": 0, "since_best": 0}, "trainer.epoch is missing"),
        ({"epoch": "3", "best_valid": 1.0, "best_epoch": 0, "since_best": 0}, "'3'"),
        ({"epoch": True, "best_valid": 1.0, "best_epoch": 0, "since_best": 0}, "True"),
        ({"epoch": -1, "best_valid": 1.0, "best_epoch": 0, "since_best": 0}, "-1"),
        ({"epoch": 2, "best_valid": "x", "best_epoch": 0, "since_best": 0}, "best_valid"),
        ({"epoch": 2, "best_valid": float("nan"), "best_epoch": 0, "since_best": 0}, "nan"),
        ({"epoch": 2, "best_valid": 1.0, "best_epoch": 3, "since_best": 0}, "at most"),
        ({"epoch": 2, "best_valid": 1.0, "best_epoch": 1, "since_best": -2}, "since_best"),
    ],
)
def test_validate_trainer_meta_refuses_bad_values(trainer, words):
    from grukit.checkpoint import validate_trainer_meta

    meta = {} if trainer is None else {"trainer": trainer}
    with pytest.raises(CheckpointError) as err:
        validate_trainer_meta(meta, "run/checkpoints/last/meta.json")
    message = str(err.value)
    assert message.startswith("run/checkpoints/last/meta.json: ") and words in message
    assert "\n" not in message


def test_validate_trainer_meta_accepts_good_values():
    from grukit.checkpoint import validate_trainer_meta

    trainer = {"epoch": 3, "best_valid": float("inf"), "best_epoch": 0, "since_best": 3, "u": 9}
    assert validate_trainer_meta({"trainer": trainer}, "m") == trainer
    state = validate_trainer_meta(
        {"trainer": {"epoch": 3, "best_valid": 2, "best_epoch": 2, "since_best": 1}}, "m"
    )
    assert isinstance(state["best_valid"], float)


def test_io_helpers_are_reexported():
    import grukit.io

    assert ckpt.atomic_write_json is grukit.io.atomic_write_json
    assert ckpt.atomic_write_bytes is grukit.io.atomic_write_bytes
    assert ckpt.atomic_write_text is grukit.io.atomic_write_text


def test_read_regular_file_and_safe_child(tmp_path):
    from grukit.io import read_regular_file, safe_child

    (tmp_path / "f").write_bytes(b"12345")
    assert read_regular_file(tmp_path / "f", max_bytes=5) == b"12345"
    assert read_regular_file(tmp_path / "f", max_bytes=9, expected_size=5) == b"12345"
    with pytest.raises(CheckpointError, match="expected at most 4"):
        read_regular_file(tmp_path / "f", max_bytes=4)
    with pytest.raises(CheckpointError, match="expected 6"):
        read_regular_file(tmp_path / "f", max_bytes=9, expected_size=6)
    with pytest.raises(CheckpointError, match="is missing"):
        read_regular_file(tmp_path / "absent", max_bytes=9)
    with pytest.raises(CheckpointError, match="device"):
        read_regular_file("/dev/null", max_bytes=9)
    with pytest.raises(CheckpointError, match="folder"):
        read_regular_file(tmp_path, max_bytes=9)
    assert safe_child(tmp_path, "a", "b/c") == tmp_path / "a" / "b" / "c"
    (tmp_path / "link").symlink_to(tmp_path / "f")
    with pytest.raises(CheckpointError, match="symbolic link"):
        safe_child(tmp_path, "link")
    with pytest.raises(CheckpointError, match="inside"):
        safe_child(tmp_path, "../x")
    with pytest.raises(CheckpointError, match="absolute"):
        safe_child(tmp_path, "/etc/passwd")
