"""torch.func over the fused kernels: grad, vmap (per-sample gradients), jacrev, grad of grad
and batched gradients give the reference path's numbers (float64, 1e-10), with the kernel run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

import grukit
from grukit import fused

pytestmark = pytest.mark.skipif(not fused.available(), reason="the fused kernels are unavailable")

F64 = torch.float64


def pair(variant: str, **kwargs: Any) -> tuple[grukit.GRU, grukit.GRU]:
    torch.manual_seed(0)
    a = grukit.GRU(3, 4, num_layers=2, variant=variant, backend="fused", **kwargs).double()
    b = grukit.GRU(3, 4, num_layers=2, variant=variant, backend="reference", **kwargs).double()
    b.load_state_dict(a.state_dict())
    return a, b


def loss_of(module: grukit.GRU) -> Callable[..., torch.Tensor]:
    def loss(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out, h_n = functional_call(module, params, (x,))
        return (out**2).sum() + h_n.sin().sum()

    return loss


def params_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in module.named_parameters()}


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-10)
    else:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["gru", "gru_reset_before", "mgu", "mingru"])
def test_grad_and_per_sample_gradients_match_the_reference(variant: str) -> None:
    fast, ref = pair(variant, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=F64)
    calls = fused.call_count()
    got = grad(loss_of(fast))(params_of(fast), x)
    assert fused.call_count() > calls, "torch.func.grad ran the fused kernel"
    assert_same(got, grad(loss_of(ref))(params_of(ref), x))
    xs = torch.randn(3, 5, 2, 3, dtype=F64)  # per-sample gradients: one per item of xs
    per_fast = vmap(grad(loss_of(fast)), in_dims=(None, 0))(params_of(fast), xs)
    per_ref = vmap(grad(loss_of(ref)), in_dims=(None, 0))(params_of(ref), xs)
    assert_same(per_fast, per_ref)
    one = grad(loss_of(fast))(params_of(fast), xs[1])
    assert_same({k: v[1] for k, v in per_fast.items()}, one)


def test_jacrev_and_grad_of_grad_match_the_reference() -> None:
    fast, ref = pair("gru")
    x = torch.randn(4, 2, 3, dtype=F64)

    def jac(m: grukit.GRU) -> torch.Tensor:
        p = params_of(m)
        return jacrev(lambda x: functional_call(m, p, (x,))[0])(x)

    assert_same(jac(fast), jac(ref))

    def second(m: grukit.GRU) -> dict[str, torch.Tensor]:
        g = grad(loss_of(m))
        return grad(lambda p: g(p, x)["weight_hh_l0"].square().sum())(params_of(m))

    assert_same(second(fast), second(ref))


def test_batched_grad_outputs_match_the_reference() -> None:
    fast, ref = pair("mgu")
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    results = []
    for m in (fast, ref):
        out, _ = m(x)
        eye = torch.eye(out.numel(), dtype=F64).view(-1, *out.shape)[:5]
        (g,) = torch.autograd.grad(out, x, eye, is_grads_batched=True)
        results.append(g)
    assert_same(*results)


def test_vmap_of_a_forward_matches_one_call_per_item() -> None:
    fast, _ = pair("gru")
    xs = torch.randn(3, 5, 2, 3, dtype=F64)
    with torch.no_grad():
        batched, h = vmap(fast)(xs)
        for i in range(3):
            out, h_i = fast(xs[i])
            torch.testing.assert_close(batched[i], out, rtol=0, atol=0)
            torch.testing.assert_close(h[i], h_i, rtol=0, atol=0)
