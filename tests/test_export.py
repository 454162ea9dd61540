"""ONNX export (grukit.export) against onnxruntime, and grukit.GRU <-> torch.nn.GRU.

Every variant, uni- and bidirectional, one and two layers, with and without lengths and h0:
outputs and final states within 1e-5 of grukit (float32, seeded random weights, odd sizes,
unequal lengths). Tests that need onnxruntime skip without it (the ``test`` extra installs it).
"""

from __future__ import annotations

import io
import itertools
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import grukit
from grukit.cli import main
from grukit.errors import ExportError
from grukit.export import to_onnx
from grukit.models import Forecaster, LanguageModel, SequenceClassifier, SequenceModel

TOL = 1e-5  # float32: grukit and onnxruntime sum the same products in other orders
I, H, T, N = 3, 5, 6, 4
LENGTHS = torch.tensor([6, 2, 5, 1])  # unsorted, one of length 1, one full
GRU_FAMILY = tuple(grukit.VARIANTS)


@pytest.fixture(scope="module")
def ort() -> Any:
    pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install -e '.[test]')")
    return pytest.importorskip(
        "onnxruntime", reason="the parity tests need onnxruntime (pip install -e '.[test]')"
    )


def session(ort: Any, model: Any) -> Any:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_onnx(ort: Any, model: Any, **feed: Any) -> dict[str, np.ndarray]:
    s = session(ort, model)
    feed = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in feed.items()}
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, feed), strict=True))


def assert_close(got: np.ndarray, want: torch.Tensor, what: str, tol: float = TOL) -> None:
    want_np = want.detach().numpy()
    assert got.shape == want_np.shape, f"{what}: shape {got.shape}, expected {want_np.shape}"
    worst = float(np.abs(got - want_np).max())
    assert worst <= tol, f"{what}: onnxruntime differs from grukit by {worst:.3g} (> {tol})"


def node_types(model: Any) -> list[str]:
    return [n.op_type for n in model.graph.node]


def grukit_run(m: grukit.GRU, x: torch.Tensor, lengths: Any, hx: Any) -> tuple[Any, Any]:
    """grukit on time-major ``x``: its output in the module's layout (zeros past each length,
    as the export's) and its state."""
    bf = m.batch_first
    x = x.transpose(0, 1) if bf else x
    with torch.no_grad():
        if lengths is None:
            return m(x, hx)
        out, state = m(pack_padded_sequence(x, lengths, bf, enforce_sorted=False), hx)
        return pad_packed_sequence(out, bf, total_length=x.shape[1 if bf else 0])[0], state


def check_gru_parity(ort: Any, m: grukit.GRU, use_lengths: bool, use_h0: bool, **export) -> Any:
    """Export ``m`` (eval), run both on seeded data; returns the ONNX model."""
    m.eval()
    D = 2 if m.bidirectional else 1
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, N, m.input_size, generator=gen)
    h0 = torch.randn(D * m.num_layers, N, m.hidden_size, generator=gen)
    c0 = torch.randn(D * m.num_layers, N, m.hidden_size, generator=gen)
    lstm = m.variant == "lstm"
    hx = ((h0, c0) if lstm else h0) if use_h0 else None
    lengths = LENGTHS if use_lengths else None
    out, state = grukit_run(m, x, lengths, hx)
    model = to_onnx(m, lengths=use_lengths, initial_state=use_h0, **export)
    feed: dict[str, Any] = {"input": x.transpose(0, 1) if m.batch_first else x}
    if use_lengths:
        feed["lengths"] = LENGTHS
    if use_h0:
        feed.update(h0=h0, **({"c0": c0} if lstm else {}))
    got = run_onnx(ort, model, **feed)
    assert_close(got["output"], out, "output")
    assert_close(got["h_n"], state[0] if lstm else state, "h_n")
    if lstm:
        assert_close(got["c_n"], state[1], "c_n")
    return model


# --------------------------------------------------------------------- the GRU, every variant


@pytest.mark.parametrize(
    "variant,bidirectional,layers,use_lengths,use_h0",
    list(
        itertools.product(grukit.ALL_VARIANTS, [False, True], [1, 2], [False, True], [False, True])
    ),  # fmt: skip
)
def test_every_variant_matches_onnxruntime(
    ort, variant, bidirectional, layers, use_lengths, use_h0
):
    torch.manual_seed(0)
    m = grukit.GRU(I, H, layers, bidirectional=bidirectional, variant=variant)
    model = check_gru_parity(ort, m, use_lengths, use_h0)
    ops = node_types(model)
    operator = {"gru": "GRU", "gru_reset_before": "GRU", "lstm": "LSTM", "rnn_tanh": "RNN"}
    if variant in operator:  # one operator per layer, directions in it
        assert ops.count(operator[variant]) == layers and "Scan" not in ops
    else:  # one Scan per layer-direction
        assert ops.count("Scan") == layers * (2 if bidirectional else 1)


@pytest.mark.parametrize("variant", ["gru", "gru_reset_before", "gru2", "mgu2", "mingru", "lstm"])
def test_without_biases(ort, variant):
    torch.manual_seed(0)
    m = grukit.GRU(I, H, 2, bias=False, bidirectional=True, variant=variant)
    check_gru_parity(ort, m, True, True)
    if variant != "lstm":  # the Scan path of the same cell
        m = grukit.GRU(I, H, 2, bias=False, variant=variant, zoneout=0.25)
        check_gru_parity(ort, m, True, True)


@pytest.mark.parametrize("variant,expected", [("gru", 1), ("gru_reset_before", 0)])
def test_the_gru_operator_carries_the_reset_placement(ort, variant, expected):
    """Swapping ``linear_before_reset`` (the bug of exporting the cuDNN cell as the original
    one) must break parity: the attribute is what makes the operator compute grukit's cell."""
    torch.manual_seed(0)
    m = grukit.GRU(I, H, 2, bidirectional=True, variant=variant).eval()
    model = check_gru_parity(ort, m, True, True)
    gru_nodes = [n for n in model.graph.node if n.op_type == "GRU"]
    assert [a.i for n in gru_nodes for a in n.attribute if a.name == "linear_before_reset"] == [
        expected
    ] * 2
    for n in gru_nodes:
        for a in n.attribute:
            if a.name == "linear_before_reset":
                a.i = 1 - a.i
    x = torch.randn(T, N, I)
    got = run_onnx(ort, model, input=x, lengths=LENGTHS, h0=torch.zeros(4, N, H))
    want, _ = grukit_run(m, x, LENGTHS, None)
    worst = float(np.abs(got["output"] - want.numpy()).max())
    assert worst > 1e-3, f"with linear_before_reset swapped the outputs still agree ({worst:.2g})"


def test_batch_first(ort):
    torch.manual_seed(0)
    for variant in ("gru", "mgu"):
        m = grukit.GRU(I, H, 2, batch_first=True, bidirectional=True, variant=variant)
        model = check_gru_parity(ort, m, True, True)
        assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[:2]] == [
            "N", "T"
        ]  # fmt: skip


def test_the_time_and_batch_axes_are_dynamic(ort):
    """One exported graph (no unrolling) runs any length and batch."""
    torch.manual_seed(0)
    for variant in ("gru", "mingru", "lstm"):
        m = grukit.GRU(I, H, 2, variant=variant).eval()
        s = session(ort, to_onnx(m))
        for steps, batch in ((1, 1), (11, 3)):
            x = torch.randn(steps, batch, I)
            out, _ = grukit_run(m, x, None, None)
            assert_close(s.run(["output"], {"input": x.numpy()})[0], out, f"T={steps} N={batch}")


# --------------------------------------------------------------------------- in-cell options


@pytest.mark.parametrize("variant", GRU_FAMILY)
@pytest.mark.parametrize(
    "options",
    [{"layer_norm": True}, {"zoneout": 0.3}, {"layer_norm": True, "zoneout": 0.2},
     {"recurrent_dropout": 0.2, "candidate_dropout": 0.3}],
    ids=["layer_norm", "zoneout", "both", "dropouts"],
)  # fmt: skip
def test_in_cell_options_at_inference(ort, variant, options):
    """Layer norm and zoneout's expectation run in the Scan; dropout is the identity."""
    if variant == "mingru" and "recurrent_dropout" in options:
        options = {"candidate_dropout": 0.3}
    torch.manual_seed(0)
    m = grukit.GRU(I, H, 2, bidirectional=True, variant=variant, **options)
    if "layer_norm" in options:  # gains away from 1, so a dropped gain would show
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.startswith("layer_norm"):
                    p.uniform_(0.5, 1.5)
    model = check_gru_parity(ort, m, True, True)
    scanned = "layer_norm" in options or "zoneout" in options
    assert ("Scan" in node_types(model)) == (scanned or variant not in ("gru", "gru_reset_before"))


def test_weight_drop_and_options_at_zero_export_the_plain_cell(ort):
    torch.manual_seed(0)
    m = grukit.GRU(I, H, 2, weight_drop=0.4, zoneout=0.0, layer_norm=False)
    model = check_gru_parity(ort, m, True, False)
    assert node_types(model).count("GRU") == 2


def test_layer_norm_needs_opset_17():
    pytest.importorskip("onnx")
    m = grukit.GRU(I, H, variant="mgu", layer_norm=True)
    with pytest.raises(ExportError, match="layer_norm needs opset 17"):
        to_onnx(m, opset=14)


@pytest.mark.parametrize("opset", [14, 18, 21])
def test_other_opsets(ort, opset):
    torch.manual_seed(0)
    for variant in ("gru", "mgu", "lstm"):
        m = grukit.GRU(I, H, 2, bidirectional=True, variant=variant)
        model = check_gru_parity(ort, m, True, True, opset=opset)
        assert model.opset_import[0].version == opset


# ------------------------------------------------------------------------------- task models


def model_config(variant: str = "gru", bidirectional: bool = False, layers: int = 2) -> Any:
    return SimpleNamespace(
        variant=variant, hidden_size=H, num_layers=layers, bidirectional=bidirectional,
        dropout=0.1, input_dropout=0.1, output_dropout=0.1, backend="auto",
    )  # fmt: skip


@pytest.mark.parametrize("variant", ["gru", "mgu", "lstm"])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_sequence_model(ort, variant, use_lengths):
    torch.manual_seed(0)
    model = SequenceModel(I, 7, model_config(variant), cell=None).eval()
    x = torch.randn(T, N, I)
    with torch.no_grad():
        if use_lengths:
            packed, state = model(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
            logits = pad_packed_sequence(packed, total_length=T)[0]
        else:
            logits, state = model(x)
    feed = {"input": x, **({"lengths": LENGTHS} if use_lengths else {})}
    got = run_onnx(ort, to_onnx(model, lengths=use_lengths), **feed)
    assert_close(got["logits"], logits, "logits")
    assert_close(got["h_n"], state[0] if variant == "lstm" else state, "h_n")


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("variant", ["gru", "gru2", "lstm"])
def test_sequence_classifier(ort, pooling, variant):
    torch.manual_seed(0)
    model = SequenceClassifier(I, 4, model_config(variant, bidirectional=True), pooling).eval()
    x = torch.randn(T, N, I)
    with torch.no_grad():
        want = model(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
    for opset in (14, 18):  # ReduceMax's axes: an attribute, then an input
        exported = to_onnx(model, opset=opset)
        got = run_onnx(ort, exported, input=x, lengths=LENGTHS)
        assert_close(got["logits"], want, f"logits (opset {opset})")


@pytest.mark.parametrize(
    "variant,decoder,bidirectional,zoneout",
    [("gru", "direct", True, 0.0), ("mgu", "direct", False, 0.1),
     ("gru", "autoregressive", False, 0.0), ("gru", "autoregressive", False, 0.1),
     ("mingru", "autoregressive", False, 0.1), ("lstm", "autoregressive", False, 0.0)],
)  # fmt: skip
def test_forecaster(ort, variant, decoder, bidirectional, zoneout):
    torch.manual_seed(0)
    inputs = 2 if decoder == "autoregressive" else 3
    cfg = model_config(variant, bidirectional)
    cell = grukit.CellOptions(zoneout=zoneout)
    model = Forecaster(inputs, 2, 4, cfg, decoder, cell=cell).eval()
    x = torch.randn(7, N, inputs)
    with torch.no_grad():
        want = model(x)
    exported = to_onnx(model)
    if decoder == "autoregressive":
        assert "Loop" in node_types(exported)
    assert_close(run_onnx(ort, exported, input=x)["forecast"], want, "forecast")


@pytest.mark.parametrize("variant", ["gru", "mgu1", "lstm"])
def test_language_model(ort, variant):
    torch.manual_seed(0)
    cfg = model_config(variant)
    model = LanguageModel(11, H, cfg, tie_weights=True).eval()
    ids = torch.randint(0, 11, (T, N))
    h0 = torch.randn(2, N, H)
    c0 = torch.randn(2, N, H)
    state = (h0, c0) if variant == "lstm" else h0
    with torch.no_grad():
        logits, final = model(ids, state)
    exported = to_onnx(model, initial_state=True)
    assert exported.graph.input[0].type.tensor_type.elem_type == 7  # int64 ids
    feed = {"ids": ids, "h0": h0, **({"c0": c0} if variant == "lstm" else {})}
    got = run_onnx(ort, exported, **feed)
    assert_close(got["logits"], logits, "logits")
    assert_close(got["h_n"], final[0] if variant == "lstm" else final, "h_n")


# ------------------------------------------------------------------------------- refusals


def test_refusals(tmp_path):
    pytest.importorskip("onnx")
    with pytest.raises(ExportError, match="cannot export a Linear; supported: grukit.GRU"):
        to_onnx(nn.Linear(2, 3))
    with pytest.raises(ExportError, match=r"opset must be an integer in \[14"):
        to_onnx(grukit.GRU(I, H), opset=9)
    classifier = SequenceClassifier(I, 2, model_config())
    with pytest.raises(ExportError, match="always takes lengths"):
        to_onnx(classifier, lengths=False)
    with pytest.raises(ExportError, match="takes no h0"):
        to_onnx(classifier, initial_state=True)
    with pytest.raises(ExportError, match="no lengths"):
        to_onnx(Forecaster(I, I, 2, model_config()), lengths=True)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"mine")
    with pytest.raises(ExportError, match="already exists; grukit never overwrites it"):
        to_onnx(grukit.GRU(I, H), path)
    assert path.read_bytes() == b"mine"
    with pytest.raises(ExportError, match="does not exist"):
        to_onnx(grukit.GRU(I, H), tmp_path / "no" / "m.onnx")


def test_without_onnx_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(ExportError, match=r"pip install 'grukit\[export\]'"):
        to_onnx(grukit.GRU(I, H))


def test_a_written_file_loads_and_a_torch_gru_exports(ort, tmp_path):
    import onnx

    torch.manual_seed(0)
    torch_gru = nn.GRU(I, H, 2, bidirectional=True).eval()
    path = tmp_path / "gru.onnx"
    to_onnx(torch_gru, path, lengths=True)
    x = torch.randn(T, N, I)
    with torch.no_grad():
        out, h_n = torch_gru(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
    got = run_onnx(ort, onnx.load(path), input=x, lengths=LENGTHS)
    assert_close(got["output"], pad_packed_sequence(out, total_length=T)[0], "output")
    assert_close(got["h_n"], h_n, "h_n")


def test_the_benchmark_peer_model_is_the_exporters_gru_operator(ort):
    from grukit.peers import onnx_gru_model

    torch.manual_seed(0)
    gru = grukit.GRU(I, H).eval()
    weights = {k[: -len("_l0")]: v.detach().numpy() for k, v in gru.state_dict().items()}
    s = ort.InferenceSession(onnx_gru_model(weights, T, N), providers=["CPUExecutionProvider"])
    x, h0 = torch.randn(T, N, I), torch.randn(1, N, H)
    y, hn = s.run(["y", "hn"], {"x": x.numpy(), "h0": h0.numpy()})
    out, h_n = grukit_run(gru, x, None, h0)
    assert_close(y[:, 0], out, "y")
    assert_close(hn, h_n, "hn")


# ------------------------------------------------------------------- torch.nn.GRU interop


@pytest.mark.parametrize("batch_first,bidirectional,bias", [(False, False, True),
                                                            (True, True, False)])  # fmt: skip
def test_to_torch_and_from_torch(batch_first, bidirectional, bias):
    torch.manual_seed(0)
    g = grukit.GRU(I, H, 2, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                   dropout=0.25)  # fmt: skip
    t = g.to_torch()
    assert isinstance(t, nn.GRU)
    assert (t.num_layers, t.bias, t.batch_first, t.bidirectional, t.dropout) == (
        2, bias, batch_first, bidirectional, 0.25
    )  # fmt: skip
    x = torch.randn(N, T, I) if batch_first else torch.randn(T, N, I)
    h0 = torch.randn(2 * (2 if bidirectional else 1), N, H)
    g.eval(), t.eval()
    with torch.no_grad():
        (a, ha), (b, hb) = g(x, h0), t(x, h0)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        torch.testing.assert_close(ha, hb, atol=1e-6, rtol=0)
        back = grukit.GRU.from_torch(t)
        assert back.training is False and back.batch_first == batch_first
        (c, hc) = back(x, h0)
        torch.testing.assert_close(c, b, atol=1e-6, rtol=0)
        torch.testing.assert_close(hc, hb, atol=1e-6, rtol=0)
    assert all(torch.equal(p, q) for p, q in zip(g.parameters(), back.parameters(), strict=True))


def test_to_torch_refuses_what_torch_cannot_compute():
    with pytest.raises(ExportError, match="variant 'gru' only, not 'mgu'"):
        grukit.GRU(I, H, variant="mgu").to_torch()
    with pytest.raises(ExportError, match="no in-cell options; this module has zoneout=0.1"):
        grukit.GRU(I, H, zoneout=0.1).to_torch()
    with pytest.raises(ExportError, match="expected a torch.nn.GRU, got LSTM"):
        grukit.GRU.from_torch(nn.LSTM(I, H))


# ------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def music_run(tiny_pickle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    argv = ["train", "--data", tiny_pickle, "--hidden-size", 6, "--num-layers", 2, "--variant",
            "mgu", "--zoneout", 0.1, "--epochs", 1, "--sample-length", 0, "--out", run,
            "--no-progress"]  # fmt: skip
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        assert main([str(a) for a in argv]) == 0
    return run


def test_export_command(ort, music_run, tmp_path, capsys):
    from grukit.train import load_run

    path = tmp_path / "music.onnx"
    status = main(["export", str(music_run), "--onnx", str(path), "--checkpoint", "last"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert f"wrote {path}" in out and "variant mgu" in out and "opset 17" in out
    assert "input  input    float (T, N, 88)" in out
    assert "output logits   float (T, N, 88)" in out and "output h_n" in out
    _, _, model = load_run(music_run, which="last")
    x = torch.rand(T, N, 88).round()
    with torch.no_grad():
        logits, _ = model(x)
    import onnx

    assert_close(run_onnx(ort, onnx.load(path), input=x)["logits"], logits, "logits")

    before = path.read_bytes()
    status = main(["export", str(music_run), "--onnx", str(path)])
    assert status == 2
    assert_one_line_error(capsys.readouterr().err, "export", str(path), "already exists")
    assert path.read_bytes() == before
    status = main(["export", str(music_run), "--onnx", str(tmp_path / "b.onnx"), "--opset", "3"])
    assert status == 2
    assert_one_line_error(capsys.readouterr().err, "export", "opset must be an integer")


def test_export_command_with_lengths_and_state_inputs(ort, music_run, tmp_path, capsys):
    from grukit.train import load_run

    path = tmp_path / "stream.onnx"
    assert main(["export", str(music_run), "--onnx", str(path), "--lengths", "--state"]) == 0
    out = capsys.readouterr().out
    assert "input  lengths" in out and "input  h0" in out
    _, _, model = load_run(music_run)
    x = torch.rand(T, N, 88).round()
    h0 = torch.randn(2, N, 6)
    with torch.no_grad():
        logits, _ = model(x, h0)
    import onnx

    lengths = torch.full((N,), T, dtype=torch.int64)
    got = run_onnx(ort, onnx.load(path), input=x, lengths=lengths, h0=h0)
    assert_close(got["logits"], logits, "logits")


@pytest.mark.parametrize("variant", ["gru", "mgu", "lstm"])
def test_an_example_input_chooses_the_inputs_and_checks_the_graph(ort, variant, tmp_path):
    """The issue's spelling ``to_onnx(module, path, example_input)``."""
    from torch.nn.utils.rnn import pack_sequence

    from grukit.export import to_onnx

    torch.manual_seed(0)
    gru = grukit.GRU(3, 4, num_layers=2, variant=variant, batch_first=True)
    x = torch.randn(2, 5, 3)
    model = to_onnx(gru, tmp_path / "plain.onnx", x)
    assert [i.name for i in model.graph.input] == ["input"]
    h0 = torch.randn(2, 2, 4)
    state = (h0, torch.randn(2, 2, 4)) if variant == "lstm" else h0
    model = to_onnx(gru, tmp_path / "state.onnx", (x, state))
    assert "h0" in [i.name for i in model.graph.input]
    packed = pack_sequence([torch.randn(5, 3), torch.randn(2, 3)])
    model = to_onnx(gru, tmp_path / "packed.onnx", packed)
    assert "lengths" in [i.name for i in model.graph.input]


def test_an_example_input_catches_a_wrong_graph(ort, monkeypatch, tmp_path):
    from grukit import export
    from grukit.errors import ExportError

    gru = grukit.GRU(3, 4)
    real = export._check_on_example

    def skewed(model, module, example):  # the module disagrees with its graph
        with torch.no_grad():
            module.weight_hh_l0.add_(0.5)
        real(model, module, example)

    monkeypatch.setattr(export, "_check_on_example", skewed)
    with pytest.raises(ExportError, match="differs from the module's"):
        export.to_onnx(gru, tmp_path / "bad.onnx", torch.randn(4, 2, 3))
    assert not (tmp_path / "bad.onnx").exists(), "nothing is written"


def test_quantize_dynamic_converts_the_torch_twin():
    """The README's account of int8 dynamic quantization: through ``to_torch()``."""
    import warnings

    torch.manual_seed(0)
    gru = grukit.GRU(6, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        q = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(gru.to_torch()), {torch.nn.GRU}, dtype=torch.qint8
        )
    assert type(q[0]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    x = torch.randn(5, 3, 6)
    out, _ = q[0](x)
    want, _ = gru(x)
    assert float((out - want).abs().max()) < 0.05
