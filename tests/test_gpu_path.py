"""The GPU path, checked on the CPU: the dispatch decision (``gru`` on CUDA runs cuDNN through
torch's own GRU), and that torch's kernel on this module's parameters (``backend="torch"``,
ATen on the CPU, the same call cuDNN serves on CUDA) equals grukit's reference."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import grukit
import grukit.variants
from grukit.backends import uses_torch_gru

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_picks_torchs_kernel_for_a_plain_gru_on_cuda_only() -> None:
    assert uses_torch_gru("auto", "gru", CUDA, False)
    assert not uses_torch_gru("auto", "gru", CPU, False)  # the fused kernels serve the CPU
    assert not uses_torch_gru("auto", "gru", CUDA, True)  # in-cell options: grukit's path
    for variant in ("gru_reset_before", "mgu", "gru1", "mingru"):
        assert not uses_torch_gru("auto", variant, CUDA, False)
    assert uses_torch_gru("torch", "gru", CPU, False)
    for backend in ("fused", "reference", "scan"):
        assert not uses_torch_gru(backend, "gru", CUDA, False)


def test_backend_torch_is_refused_where_torch_has_no_kernel() -> None:
    with pytest.raises(ValueError, match="computes variant 'gru' only; variant 'mgu'"):
        grukit.GRU(3, 4, variant="mgu", backend="torch")
    with pytest.raises(ValueError, match="no in-cell options"):
        grukit.GRU(3, 4, backend="torch", zoneout=0.1)
    with pytest.raises(ValueError, match="no in-cell options"):
        grukit.GRUCell(3, 4, backend="torch", layer_norm=True)


def pair(cls: type, *args: object, **kwargs: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    fast = cls(*args, backend="torch", dtype=torch.float64, **kwargs)
    ref = cls(*args, backend="reference", dtype=torch.float64, **kwargs)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def grads(module: torch.nn.Module, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters()] + [t.grad for t in tensors]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layout", ["padded", "batch_first", "packed", "unbatched"])
def test_torchs_gru_kernel_equals_the_reference(
    layers: int, bidirectional: bool, layout: str
) -> None:
    kwargs = {"bidirectional": bidirectional, "batch_first": layout == "batch_first"}
    fast, ref = pair(grukit.GRU, 5, 6, layers, **kwargs)
    D = 2 if bidirectional else 1
    results = []
    for module in (fast, ref):
        torch.manual_seed(1)
        if layout == "packed":
            seqs = [torch.randn(n, 5, dtype=torch.float64) for n in (7, 4, 2)]
            x = pack_sequence([s.requires_grad_() for s in seqs], enforce_sorted=False)
            h0 = torch.randn(D * layers, 3, 6, dtype=torch.float64, requires_grad=True)
            out, h_n = module(x, h0)
            loss = (out.data**2).sum() + (h_n**3).sum()
            leaves = [*seqs, h0]
        else:
            shape = {"padded": (7, 3, 5), "batch_first": (3, 7, 5), "unbatched": (7, 5)}[layout]
            x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
            hshape = (D * layers, 6) if layout == "unbatched" else (D * layers, 3, 6)
            h0 = torch.randn(*hshape, dtype=torch.float64, requires_grad=True)
            out, h_n = module(x, h0)
            loss = (out**2).sum() + (h_n**3).sum()
            leaves = [x, h0]
        loss.backward()
        results.append((out.data if layout == "packed" else out, h_n, grads(module, *leaves)))
    assert fast.last_backend == "torch" and ref.last_backend == "reference"
    (o1, h1, g1), (o2, h2, g2) = results
    close(o1, o2)
    close(h1, h2)
    for a, b in zip(g1, g2, strict=True):
        close(a, b)


def test_torchs_gru_cell_equals_the_reference() -> None:
    fast, ref = pair(grukit.GRUCell, 5, 6)
    x = torch.randn(4, 5, dtype=torch.float64)
    h = torch.randn(4, 6, dtype=torch.float64)
    outs = [m(x, h) for m in (fast, ref)]
    close(*outs)
    for out in outs:
        out.pow(2).sum().backward()
    for a, b in zip(fast.parameters(), ref.parameters(), strict=True):
        close(a.grad, b.grad)
    assert fast.last_backend == "torch"


def test_auto_on_the_cpu_still_runs_grukits_kernels() -> None:
    module = grukit.GRU(5, 6)
    module(torch.randn(4, 2, 5))
    from grukit import fused

    assert module.last_backend == ("fused" if fused.available() else "reference")


# ------------------------------------------------------------------ backend="compiled"

GRU_FAMILY = [v for v in grukit.variants.VARIANTS]


@pytest.fixture
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compile through AOTAutograd without code generation: the wiring, not inductor."""
    from grukit import compiled

    monkeypatch.setitem(compiled.COMPILE_OPTIONS, "backend", "aot_eager")


def run_both(
    variant: str, train: bool, layers: int = 1, **options: object
) -> list[list[torch.Tensor]]:
    torch.manual_seed(0)
    kwargs = {"variant": variant, "bidirectional": True, "dtype": torch.float64, **options}
    fast = grukit.GRU(4, 5, layers, backend="compiled", **kwargs)
    ref = grukit.GRU(4, 5, layers, backend="reference", **kwargs)
    ref.load_state_dict(fast.state_dict())
    results = []
    for module in (fast, ref):
        module.train(train)
        seqs = [torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
                for n in (6, 3, 2)]  # fmt: skip
        x = pack_sequence(seqs, enforce_sorted=False)
        h0 = torch.linspace(-1, 1, 2 * layers * 3 * 5, dtype=torch.float64).view(-1, 3, 5)
        out, h_n = module(x, h0, generator=torch.Generator().manual_seed(9))
        ((out.data**2).sum() + h_n.sum()).backward()
        results.append([out.data, h_n, *(p.grad for p in module.parameters())])
    assert fast.last_backend == "compiled"
    return results


@pytest.mark.parametrize("variant", GRU_FAMILY)
def test_the_compiled_step_equals_the_reference(variant: str, aot_eager: None) -> None:
    fast, ref = run_both(variant, train=False)
    for a, b in zip(fast, ref, strict=True):
        close(a, b)


@pytest.mark.parametrize("variant", ["gru", "mgu2", "mingru"])
def test_the_compiled_step_with_in_cell_options(variant: str, aot_eager: None) -> None:
    options = {"recurrent_dropout": 0.3, "zoneout": 0.2, "layer_norm": True}
    if variant == "mingru":
        options.pop("recurrent_dropout")  # minGRU's gates never read h
    fast, ref = run_both(
        variant, train=True, layers=2, **options
    )  # the same generator: the same masks
    for a, b in zip(fast, ref, strict=True):
        close(a, b)


@pytest.mark.slow
def test_the_compiled_step_through_inductor() -> None:
    """One variant through inductor's generated code (a C++ compiler on the CPU, Triton on
    CUDA): forward and gradients still equal the reference."""
    fast, ref = run_both("mgu", train=False)
    for a, b in zip(fast, ref, strict=True):
        close(a, b)


def test_backend_compiled_is_for_the_gru_family() -> None:
    with pytest.raises(ValueError, match="applies to the GRU variants only"):
        grukit.GRU(3, 4, variant="lstm", backend="compiled")


def test_the_device_benchmark_times_every_path(aot_eager: None) -> None:
    """``grukit bench --device cuda`` on the CPU (where it runs too): every candidate timed,
    ratios to torch.nn.GRU, the report formatted."""
    from grukit.bench import Shape, format_device_report, run_device_benchmark

    report = run_device_benchmark(
        "cpu", [Shape("tiny", 2, 5, 3, 4)], ["gru", "mgu"], rounds=2, log=lambda _: None
    )
    entry = report["shapes"]["tiny"]
    assert set(entry["median_s"]) == {
        "torch.nn.GRU", "torch.nn.LSTM", "auto gru", "reference gru", "compiled gru",
        "reference mgu", "compiled mgu",
    }  # fmt: skip
    assert entry["vs_torch_gru"]["torch.nn.GRU"] == {"forward": 1.0, "train": 1.0}
    assert "compiled mgu" in format_device_report(report)


@pytest.mark.parametrize("cls", [grukit.GRU, grukit.GRUCell])
def test_the_modules_take_the_cuda_decision_as_on_a_gpu(
    cls: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The modules' dispatch, with every tensor's device read as CUDA: a plain gru goes to
    torch's kernel; in-cell options, another variant or given masks stay on grukit's path."""
    import grukit.rnn

    real = grukit.rnn.uses_torch_gru
    monkeypatch.setattr(grukit.rnn, "uses_torch_gru", lambda b, v, d, o: real(b, v, CUDA, o))
    x = torch.randn(3, 4) if cls is grukit.GRUCell else torch.randn(5, 3, 4)
    for kwargs, expected in (
        ({}, "torch"), ({"zoneout": 0.1}, "fused"), ({"variant": "mgu"}, "fused"),
        ({"layer_norm": True}, "fused"),
    ):  # fmt: skip
        module = cls(4, 6, **kwargs)
        module(x)
        assert module.last_backend == expected, kwargs
