"""The benchmark runs end to end and reports every candidate (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

import grukit.fused
from grukit import bench

pytestmark = pytest.mark.skipif(
    not grukit.fused.available(), reason="the fused kernels could not be built here"
)


def test_benchmark_reports_every_candidate_and_ratio(monkeypatch):
    tiny = bench.Shape("T1", 2, 5, 3, 4)
    monkeypatch.setattr(bench, "SCAN_SHAPE", bench.Shape("M0", 2, 20, 3, 4))
    report = bench.run_benchmark(
        [tiny], ["gru", "mingru"], rounds=2, budget_s=5, log=lambda s: None
    )
    entry = report["shapes"]["T1"]
    names = set(entry["median_s"])
    assert names == {
        "torch.nn.GRU", "torch.nn.LSTM", "reference gru", "fused gru", "fused mingru", "GEMM floor"
    }  # fmt: skip
    for name in names:
        for mode in ("forward", "train"):
            assert entry["median_s"][name][mode] > 0
            r = entry["ratios"][name][mode]
            assert r["vs_torch_gru"] > 0 and r["vs_torch_lstm"] > 0 and r["floor_fraction"] > 0
    assert entry["ratios"]["torch.nn.GRU"]["train"]["vs_torch_gru"] == 1.0
    assert set(report["mingru_scan"]["speedup_vs_sequential"]) == {
        "mingru reference", "mingru scan", "mingru fused"
    }  # fmt: skip
    assert report["machine"]["peak_sgemm_gflops"] > 0 and report["machine"]["isa"]
    assert entry["fused_gru_share_of_peak"]["train"] > 0
    text = bench.format_report(report)
    assert "| fused gru |" in text and "minGRU" in text and "peak sgemm" in text
    json.dumps(report)  # JSON-ready


def test_cli_rejects_unknown_shape_and_variant():
    from grukit.cli import main

    assert main(["bench", "--shapes", "S9"]) == 2
    assert main(["bench", "--variants", "gru9"]) == 2


def test_contention_benchmark_reports_quiet_and_loaded_times(monkeypatch):
    """One busy process (a real subprocess, killed afterwards) and the slowdown table."""
    monkeypatch.setattr(bench, "CONTEND_WARMUP", 2)
    tiny = bench.Shape("T1", 2, 5, 3, 4)
    report = bench.run_contention_benchmark([tiny], busy=1, rounds=2, budget_s=5, log=print)
    entry = report["shapes"]["T1"]
    (label,) = report["loads"]
    assert label == "beside 1 busy process"
    for name in bench.CONTEND_NAMES:
        for mode in ("forward", "train"):
            assert entry["quiet_s"][name][mode] > 0
            assert entry["loaded_s"][label][name][mode] > 0
            assert entry["slowdown"][label][name][mode] == pytest.approx(
                entry["loaded_s"][label][name][mode] / entry["quiet_s"][name][mode]
            )
    text = bench.format_contention_report(report)
    assert "| fused gru, 1 thread |" in text and "beside 1 busy process" in text
    json.dumps(report)


def test_contend_refuses_a_negative_count():
    from grukit.cli import main

    assert main(["bench", "--contend", "-1"]) == 2


def test_contention_benchmark_with_onnxruntime_in_the_process(monkeypatch):
    pytest.importorskip("onnxruntime", reason="the bench extra (onnx, onnxruntime) is absent")
    pytest.importorskip("onnx", reason="the bench extra (onnx, onnxruntime) is absent")
    monkeypatch.setattr(bench, "CONTEND_WARMUP", 2)
    tiny = bench.Shape("T1", 2, 5, 3, 4)
    report = bench.run_contention_benchmark(
        [tiny], busy=0, onnxruntime=True, rounds=2, budget_s=5, log=print
    )
    assert report["loads"] == ["beside 0 busy processes", "onnxruntime in the process"]
    assert (
        report["shapes"]["T1"]["slowdown"]["onnxruntime in the process"]["fused gru"]["train"] > 0
    )


def test_peers_benchmark_times_each_peer_or_says_it_is_missing():
    """Each peer runs in its own process on the same weights; one that is not installed (the
    bench extra) is reported, not fatal."""
    tiny = bench.Shape("T1", 2, 5, 3, 4)
    report = bench.run_peers_benchmark([tiny], rounds=2, budget_s=5, log=print)
    entry = report["shapes"]["T1"]
    assert set(entry["peers"]) == {"onnxruntime", "openvino", "jax"}
    for peer, r in entry["peers"].items():
        if "error" in r:
            assert "not installed" in r["error"], (peer, r)
        else:
            assert r["median_s"] > 0 and r["max_abs_diff"] <= 1e-4
            assert entry["vs_fused_gru"][peer] > 0
    assert "| fused gru | forward |" in bench.format_peers_report(report)
    json.dumps(report)


def test_step_benchmark_reports_every_candidate_and_variant():
    report = bench.run_step_benchmark(
        (8,), rounds=1, calls=2, variants=("gru", "mgu", "mingru"), log=lambda s: None
    )
    entry = report["hidden"]["8"]
    assert {"grukit GRUCell", "grukit GRU.step", "torch.nn.GRUCell"} <= set(entry["median_us"])
    assert set(entry["variants_us"]) == {"gru", "mgu", "mingru"}
    assert all(t["grukit"] > 0 and t["torch.nn.GRUCell"] > 0 for t in entry["variants_us"].values())
    text = bench.format_step_report(report)
    assert "| mgu |" in text and "every variant's GRUCell" in text
