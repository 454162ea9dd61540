"""Gate inspection (grukit.inspect, grukit inspect): recorded states equal the module's on every
variant and backend, recorded gates equal the variants' equations computed by hand, deep,
bidirectional and packed input, the statistics of a gate fixed by construction, nothing left on
the module afterwards, and the command end to end on a tiny music run."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import assert_one_line_error
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

import grukit
import grukit.inspect as gi
from grukit.cli import main
from grukit.variants import VARIANTS

F64 = torch.float64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAMILY_GATES = {"gru": ("r", "z"), "mgu": ("f",), "mingru": ("z",)}


def sig(a: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-a))


def make(variant: str, backend: str = "reference", **kw: Any) -> grukit.GRU:
    torch.manual_seed(11)
    return grukit.GRU(5, 7, variant=variant, backend=backend, dtype=F64, **kw).eval()


def packed_input() -> Any:
    g = torch.Generator().manual_seed(3)
    lengths = (4, 9, 1, 6)  # unsorted, one of length 1
    return pack_sequence(
        [torch.randn(n, 5, dtype=F64, generator=g) for n in lengths], enforce_sorted=False
    )


# ------------------------------------------------------------------ states equal the module's


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_recorded_h_is_the_module_output(variant: str, backend: str) -> None:
    gru = make(variant, backend, num_layers=2, bidirectional=True)
    x = packed_input()
    out, h_n = gru(x)
    rec = gi.record(gru, x)
    assert rec.backend == backend  # the backend under test really ran
    padded, lengths = pad_packed_sequence(out, padding_value=math.nan)  # (T, N, 2H)
    assert torch.equal(rec.lengths, lengths)
    top = torch.cat([rec.layer(1, 0).values["h"], rec.layer(1, 1).values["h"]], -1)
    valid = ~torch.isnan(padded)
    assert torch.equal(valid, ~torch.isnan(top))  # NaN exactly after each sequence's end
    diff = (top[valid] - padded[valid]).abs().max().item()
    print(f"{variant} {backend}: max |h - output| {diff:.2e}")
    assert diff <= 1e-10
    for index, lr in enumerate(rec.layers):  # every layer-direction's final state is h_n's
        T = rec.lengths
        last = [lr.values["h"][T[b] - 1 if lr.direction == 0 else 0, b] for b in range(len(T))]
        assert torch.allclose(torch.stack(last), h_n[index], atol=1e-10, rtol=0)
    assert set(rec.layer(0).values) == {*FAMILY_GATES[VARIANTS[variant].family], "n", "h"}


def test_a_recording_that_does_not_reproduce_the_module_is_refused(monkeypatch) -> None:
    gru = make("gru")
    x = torch.randn(6, 2, 5, dtype=F64)
    real = gi.reference_layer

    def off_by_a_bit(*args: Any) -> Any:
        out, h_n = real(*args)
        return out + 1e-6, h_n

    monkeypatch.setattr(gi, "reference_layer", off_by_a_bit)
    with pytest.raises(gi.RecordingMismatchError, match="differ from the module's"):
        gi.record(gru, x)


# ------------------------------------------------------------------ gates by hand


def hand_step(variant: str, gru: grukit.GRU, x: torch.Tensor, h: torch.Tensor) -> dict:
    """One step of the variant's equations (README table), written out from the parameters."""
    H = gru.hidden_size
    W, U = gru.weight_ih_l0, gru.weight_hh_l0 if hasattr(gru, "weight_hh_l0") else None
    bi, bh = gru.bias_ih_l0, getattr(gru, "bias_hh_l0", None)

    def blk(t: torch.Tensor, k: int) -> torch.Tensor:
        return t[k * H : (k + 1) * H]

    if variant == "gru":
        r = sig(blk(W, 0) @ x + blk(bi, 0) + blk(U, 0) @ h + blk(bh, 0))
        z = sig(blk(W, 1) @ x + blk(bi, 1) + blk(U, 1) @ h + blk(bh, 1))
        n = torch.tanh(blk(W, 2) @ x + blk(bi, 2) + r * (blk(U, 2) @ h + blk(bh, 2)))
        return {"r": r, "z": z, "n": n, "h": (1 - z) * n + z * h}
    if variant == "mgu":
        f = sig(blk(W, 0) @ x + blk(bi, 0) + blk(U, 0) @ h + blk(bh, 0))
        n = torch.tanh(blk(W, 1) @ x + blk(bi, 1) + blk(U, 1) @ (f * h) + blk(bh, 1))
        return {"f": f, "n": n, "h": (1 - f) * h + f * n}
    assert variant == "mingru"
    z = sig(blk(W, 0) @ x + blk(bi, 0))
    a = blk(W, 1) @ x + blk(bi, 1)
    n = torch.where(a >= 0, a + 0.5, sig(a))
    return {"z": z, "n": n, "h": (1 - z) * h + z * n}


@pytest.mark.parametrize("variant", ["gru", "mgu", "mingru"])
def test_recorded_gates_equal_the_equations_by_hand(variant: str) -> None:
    gru = make(variant, "fused")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 5, dtype=F64, generator=g)
    h0 = torch.randn(1, 2, 7, dtype=F64, generator=g) * 0.5  # a carried-in state
    rec = gi.record(gru, x, h0).layer(0)
    for b in range(2):
        h = h0[0, b]
        for t in range(3):  # each step from the recorded state of the step before
            want = hand_step(variant, gru, x[t, b], h)
            for key, value in want.items():
                got = rec.values[key][t, b]
                assert torch.allclose(got, value, atol=1e-12, rtol=0), (variant, key, t, b)
            h = rec.values["h"][t, b]
    gate = rec.values[FAMILY_GATES[variant][-1]]  # z keeps (gru); f and minGRU's z write
    assert torch.equal(rec.kept, gate if variant == "gru" else 1 - gate)


def test_the_reverse_direction_is_indexed_by_time_and_reads_the_future() -> None:
    torch.manual_seed(2)
    gru = grukit.GRU(5, 7, bidirectional=True, dtype=F64).eval()
    x = torch.randn(4, 1, 5, dtype=F64)
    rec = gi.record(gru, x).layer(0, 1)
    # the reverse direction's step at time 3 is its first: it starts from a zero state
    w_rev = grukit.GRU(5, 7, dtype=F64).eval()
    w_rev.load_state_dict({k.replace("_reverse", ""): v for k, v in gru.state_dict().items()
                           if k.endswith("_reverse")})  # fmt: skip
    want = hand_step("gru", w_rev, x[3, 0], torch.zeros(7, dtype=F64))
    for key in ("r", "z", "n", "h"):
        assert torch.allclose(rec.values[key][3, 0], want[key], atol=1e-12, rtol=0), key


# ------------------------------------------------------------------ layouts and options


def test_deep_bidirectional_packed_equals_each_sequence_alone() -> None:
    gru = make("gru_reset_before", "fused", num_layers=3, bidirectional=True)
    x = packed_input()
    rec = gi.record(gru, x)
    seqs = pad_packed_sequence(x)
    for b in range(4):
        T = int(seqs[1][b])
        alone = gi.record(gru, seqs[0][:T, b : b + 1])  # padded layout, batch of one
        for lr, la in zip(rec.layers, alone.layers, strict=True):
            for key in lr.values:
                assert torch.allclose(lr.values[key][:T, b], la.values[key][:, 0], atol=1e-12)
            assert torch.isnan(lr.values["h"][T:, b]).all()


def test_batch_first_and_unbatched_inputs_record_time_major() -> None:
    gru = make("mgu", "fused", num_layers=2, batch_first=True)
    x = torch.randn(3, 6, 5, dtype=F64)  # (N, T, H_in)
    rec = gi.record(gru, x)
    out, _ = gru(x)
    assert rec.layer(1).values["h"].shape == (6, 3, 7)
    assert torch.allclose(rec.layer(1).values["h"], out.transpose(0, 1), atol=1e-10)
    one = gi.record(gru, x[1])  # unbatched (T, H_in)
    assert torch.allclose(one.layer(1).values["f"][:, 0], rec.layer(1).values["f"][:, 1])


@pytest.mark.parametrize("variant", ["gru", "mgu1", "mingru"])
def test_in_cell_options_in_evaluation_and_training(variant: str) -> None:
    opts = {"zoneout": 0.3, "layer_norm": True, "candidate_dropout": 0.2}
    if variant != "mingru":
        opts.update(recurrent_dropout=0.25, weight_drop=0.2)
    gru = make(variant, "fused", num_layers=2, **opts)
    x = torch.randn(5, 3, 5, dtype=F64)
    rec = gi.record(gru, x)  # evaluation: dropout is identity, zoneout its expectation
    assert rec.max_abs_diff <= 1e-10
    gate = rec.layer(0).values[FAMILY_GATES[VARIANTS[variant].family][-1]]
    k = gate if VARIANTS[variant].family == "gru" else 1 - gate
    assert torch.allclose(rec.layer(0).kept, 0.3 + 0.7 * k, atol=1e-15)
    gru.train()  # training: the masks are drawn once, shared by the call and the recording
    with gi.recording(gru) as r:
        out, _ = gru(x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(r.recording.layer(1).values["h"], out, atol=1e-10)
    lr = r.recording.layer(0)  # a zoned-out unit keeps all; the others keep the gate's share
    gate = lr.values[FAMILY_GATES[VARIANTS[variant].family][-1]]
    k = gate if VARIANTS[variant].family == "gru" else 1 - gate
    whole = lr.kept == 1
    assert whole.any() and (~whole).any()
    assert torch.allclose(lr.kept[~whole], k[~whole], atol=1e-15)


def test_refusals() -> None:
    for baseline in ("lstm", "rnn_tanh"):
        with pytest.raises(ValueError, match="GRU family"):
            gi.record(grukit.GRU(3, 4, variant=baseline), torch.randn(2, 1, 3))
    deep = grukit.GRU(3, 4, num_layers=2, dropout=0.5).train()
    with pytest.raises(ValueError, match="module.eval"):
        gi.record(deep, torch.randn(2, 1, 3))
    with pytest.raises(TypeError, match="grukit.GRU"):
        gi.record(torch.nn.GRU(3, 4), torch.randn(2, 1, 3))


# ------------------------------------------------------------------ no trace left


def test_nothing_is_left_on_the_module_after_recording() -> None:
    gru = make("gru", "fused", num_layers=2)
    x = torch.randn(8, 2, 5, dtype=F64)
    before = gru(x)
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
             "_forward_pre_hooks_with_kwargs")  # fmt: skip
    state = {k: dict(getattr(gru, k)) for k in hooks}
    with gi.recording(gru) as rec:
        assert len(gru._forward_hooks) == 1 and len(gru._forward_pre_hooks) == 1
        gru(x)
    assert len(rec.calls) == 1
    assert {k: dict(getattr(gru, k)) for k in hooks} == state == {k: {} for k in hooks}
    after = gru(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    with pytest.raises(RuntimeError, match="boom"), gi.recording(gru):  # removed on errors too
        raise RuntimeError("boom")
    assert not gru._forward_hooks and not gru._forward_pre_hooks
    gi.record(gru, x)
    assert not gru._forward_hooks and not gru._forward_pre_hooks
    assert torch.nn.modules.module._global_forward_hooks == {}


# ------------------------------------------------------------------ statistics


def test_statistics_of_gates_fixed_by_construction() -> None:
    """gru3's gates are biases alone: r = sigma(b_r), z = sigma(b_z) at every step."""
    gru = grukit.GRU(2, 4, variant="gru3", dtype=F64).eval()
    z = torch.tensor([0.9, 0.5, 0.99, 0.0], dtype=F64)
    r = torch.tensor([0.97, 0.5, 0.01, 0.5], dtype=F64)
    logit = lambda p: torch.log(p) - torch.log1p(-p)  # noqa: E731
    with torch.no_grad():
        gru.bias_hh_l0[:4] = logit(r)
        gru.bias_hh_l0[4:8] = torch.where(z > 0, logit(z.clamp(min=1e-300)), -800.0)
    x = pack_sequence([torch.randn(n, 2, dtype=F64) for n in (7, 3)])
    stats = gi.record(gru, x).statistics()
    units = stats["layers"][0]["units"]
    assert units["kept_share"] == pytest.approx([0.9, 0.5, 0.99, 0.0], abs=1e-6)
    assert units["update_rate"] == pytest.approx([0.1, 0.5, 0.01, 1.0], abs=1e-6)
    assert units["horizon"] == pytest.approx([10.0, 2.0, 100.0, 1.0], abs=1e-4)
    half = [math.log(0.5) / math.log(k) for k in (0.9, 0.5, 0.99)] + [0.0]
    assert units["half_life"] == pytest.approx(half, abs=1e-4)
    assert units["saturated"]["z"] == [0.0, 0.0, 1.0, 1.0]
    assert units["saturated"]["r"] == [1.0, 0.0, 1.0, 0.0]
    summary = stats["layers"][0]["summary"]
    assert summary["units_horizon_over_10"] == 1 and summary["median_horizon"] == 6.0
    assert stats["steps"] == 7 and stats["sequences"] == 2


def test_padding_never_counts_and_a_unit_that_keeps_everything_has_no_horizon() -> None:
    kept = torch.tensor([[[1.0, 0.5]], [[1.0, 0.75]], [[math.nan, math.nan]]])  # (3, 1, 2)
    gate = torch.tensor([[[0.99, 0.2]], [[0.96, 0.04]], [[math.nan, math.nan]]])
    units = gi.unit_statistics({"z": gate}, kept, ["z"])
    assert units["kept_share"] == [1.0, 0.625]
    assert units["horizon"][0] is None and units["half_life"][0] is None
    assert units["horizon"][1] == pytest.approx(1 / 0.375)
    assert units["saturated"]["z"] == [1.0, 0.5]


# ------------------------------------------------------------------ the command


def call(*argv: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny_run(tiny_pickle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("inspect") / "run"
    status, _, err = call("train", "--data", tiny_pickle, "--hidden-size", 6, "--epochs", 2,
                          "--out", run, "--no-progress", "--task.sample-length", 0)  # fmt: skip
    assert status == 0, err
    return run


def test_inspect_writes_a_png_and_the_statistics(tiny_run: Path) -> None:
    status, out, err = call("inspect", tiny_run, "--split", "test", "--index", 1)
    assert status == 0, err
    png = tiny_run / "inspect" / "inspect-test-1.png"
    stats = json.loads((tiny_run / "inspect" / "inspect-test-1.json").read_text())
    assert png.read_bytes().startswith(PNG_MAGIC) and str(png) in out
    assert stats["variant"] == "gru" and stats["split"] == "test" and stats["index"] == 1
    layer = stats["layers"][0]
    assert len(layer["units"]["horizon"]) == 6 and set(layer["units"]["saturated"]) == {"r", "z"}
    from grukit.train import load_run

    _, task, model = load_run(tiny_run)
    assert stats["steps"] == task.sequence("test", 1).shape[0]
    # the statistics are those of the recorded model on that case
    want = gi.record(model.rnn, task.sequence("test", 1)[:, None]).statistics()
    assert layer["units"] == want["layers"][0]["units"]
    status, _, _ = call("inspect", tiny_run, "--index", 1)  # its own file: written again
    assert status == 0


def test_inspect_json_prints_parseable_json_and_refuses_to_overwrite(
    tiny_run: Path, tmp_path: Path
) -> None:
    status, out, err = call("inspect", tiny_run, "--index", 0, "--out", tmp_path, "--json")
    assert status == 0, err
    stats = json.loads(out)
    assert stats["index"] == 0 and stats["layers"][0]["summary"]["update_rate"] > 0
    assert json.loads((tmp_path / "inspect-test-0.json").read_text()) == stats
    assert (tmp_path / "inspect-test-0.png").read_bytes().startswith(PNG_MAGIC)
    mine = tmp_path / "other"
    mine.mkdir()
    (mine / "inspect-test-0.png").write_bytes(b"mine")
    status, out, err = call("inspect", tiny_run, "--index", 0, "--out", mine)
    assert status == 2 and out == ""
    assert_one_line_error(err, "inspect", "already exists", "never overwrites")
    assert (mine / "inspect-test-0.png").read_bytes() == b"mine"
    assert not (mine / "inspect-test-0.json").exists()  # nothing written beside it either
    status, _, err = call("inspect", tiny_run, "--index", 99)
    assert status == 2
    assert_one_line_error(err, "inspect", "--index must be in [0, 3]")


def test_the_recording_is_indexed_by_layer_then_direction_then_name() -> None:
    """The spelling scripts rely on: ``record(m, x)[layer]["forward"]["z"]``, batch-first if
    the module is."""
    torch.manual_seed(0)
    for batch_first in (False, True):
        gru = grukit.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
        gru = gru.double()
        x = torch.randn(2, 5, 3, dtype=torch.float64)  # (T=2, N=5) or (N=2, T=5)
        rec = gi.record(gru, x)
        assert len(rec) == 2 and len(list(rec)) == 2
        entry = rec[1]
        assert set(entry) == {"forward", "reverse"} and set(entry["forward"]) == {
            "r",
            "z",
            "n",
            "h",
        }
        assert entry["reverse"]["z"].shape == (2, 5, 4)
        out, _ = gru(x)
        torch.testing.assert_close(entry["forward"]["h"], out[..., :4], rtol=1e-10, atol=1e-10)
        assert torch.equal(rec[-1]["forward"]["h"], entry["forward"]["h"])
        with pytest.raises(IndexError):
            rec[2]
