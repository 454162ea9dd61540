"""torch.compile (fullgraph, no graph break) and torch.export over grukit layers: the fused
kernels are custom operators with shape-only (fake) versions, so a compiled model runs them."""

from __future__ import annotations

import pytest
import torch

import grukit
from grukit import fused
from grukit.models import SequenceModel
from grukit.runconfig import ModelConfig

pytestmark = pytest.mark.skipif(not fused.available(), reason="the fused kernels are unavailable")

# aot_eager runs the fake kernels, AOT autograd and the real kernels, without inductor's C++
# compile of the code around them (which the inductor test below does once)
BACKEND = "aot_eager"


def fresh_compile(module: torch.nn.Module, backend: str = BACKEND) -> torch.nn.Module:
    torch._dynamo.reset()
    return torch.compile(module, fullgraph=True, backend=backend)


@pytest.mark.parametrize("variant", ["gru", "gru_reset_before", "mgu", "mingru", "gru3"])
def test_a_compiled_layer_trains_through_the_fused_kernel(variant: str) -> None:
    torch.manual_seed(0)
    gru = grukit.GRU(5, 7, num_layers=2, bidirectional=True, variant=variant)
    x = torch.randn(6, 3, 5, requires_grad=True)
    out, h_n = gru(x)
    (out.sum() + h_n.square().sum()).backward()
    want = [p.grad.clone() for p in gru.parameters()] + [x.grad.clone()]
    gru.zero_grad()
    x.grad = None

    compiled = fresh_compile(gru)
    calls = fused.call_count()
    got_out, got_h = compiled(x)
    assert fused.call_count() > calls, "the compiled graph ran the fused kernel"
    assert gru.last_backend == "fused"
    (got_out.sum() + got_h.square().sum()).backward()
    torch.testing.assert_close(got_out, out, rtol=0, atol=0)
    torch.testing.assert_close(got_h, h_n, rtol=0, atol=0)
    for g, w in zip([p.grad for p in gru.parameters()] + [x.grad], want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_a_compiled_layer_in_inference_and_with_cell_options() -> None:
    torch.manual_seed(1)
    gru = grukit.GRU(4, 6, variant="gru", layer_norm=True, zoneout=0.2).eval()
    x = torch.randn(5, 2, 4)
    compiled = fresh_compile(gru)
    with torch.no_grad():
        want, _ = gru(x)
        got, _ = compiled(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_task_model_compiles_whole_with_its_head_and_loss() -> None:
    torch.manual_seed(2)
    model = SequenceModel(88, 88, ModelConfig(hidden_size=16, num_layers=2))
    x = (torch.rand(12, 4, 88) < 0.1).float()

    def step(inputs: torch.Tensor) -> torch.Tensor:
        logits, _ = model(inputs[:-1])
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, inputs[1:])

    eager = step(x)
    eager.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    loss = torch.compile(step, fullgraph=True, backend=BACKEND)(x)
    loss.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-6, atol=1e-6)
    for p, w in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6)


def test_inductor_compiles_a_layer_without_a_graph_break() -> None:
    torch.manual_seed(3)
    gru = grukit.GRU(3, 5)
    x = torch.randn(4, 2, 3)
    explained = torch._dynamo.explain(gru)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    got, _ = fresh_compile(gru, backend="inductor")(x)
    torch.testing.assert_close(got, gru(x)[0], rtol=1e-6, atol=1e-6)


def test_torch_export_captures_a_layer() -> None:
    torch.manual_seed(4)
    gru = grukit.GRU(3, 5, num_layers=2).eval()
    x = torch.randn(4, 2, 3)
    program = torch.export.export(gru, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "grukit.rnn_forward.default" in ops
    got, _ = program.module()(x)
    torch.testing.assert_close(got, gru(x)[0], rtol=0, atol=0)
