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
    text = bench.format_report(report)
    assert "| fused gru |" in text and "minGRU" in text
    json.dumps(report)  # JSON-ready


def test_cli_rejects_unknown_shape_and_variant():
    from grukit.cli import main

    assert main(["bench", "--shapes", "S9"]) == 2
    assert main(["bench", "--variants", "gru9"]) == 2
