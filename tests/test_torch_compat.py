"""grukit.GRU / GRUCell in torch.nn.GRU / GRUCell's terms: one test (or group) per behaviour
that PyTorch's own tests check (test/test_nn.py, test/test_modules.py with common_modules'
module_inputs_torch_nn_RNN_GRU*, test/test_expanded_weights.py), written for grukit's classes.

Each compares with what torch's class does on the same call where torch has an answer; tiny
sizes, float64 where numbers are compared.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils._per_sample_grad import call_for_per_sample_grads
from torch.nn.utils.rnn import pack_padded_sequence

import grukit
from grukit import fused
from grukit.errors import ScriptingError

F64 = torch.float64
needs_fused = pytest.mark.skipif(not fused.available(), reason="the fused kernels are unavailable")
FUSED_BACKENDS = ["reference", "fused"] if fused.available() else ["reference"]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def gru_pair(**kwargs: Any) -> tuple[grukit.GRU, nn.GRU]:
    """A grukit GRU and a torch.nn.GRU with the same settings and weights (float64)."""
    torch.manual_seed(0)
    ours = grukit.GRU(**kwargs).double()
    theirs = nn.GRU(**kwargs).double()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def raised(call: Callable[[], Any]) -> type[BaseException]:
    """The class of the exception ``call`` raises (it must raise)."""
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the class is what is compared
        return type(e)
    raise AssertionError("expected an exception")


# ---------------------------------------------------------------- empty batch, zero hidden size


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_empty_batch_as_torchs_input_size_zero_test(bidirectional: bool, backend: str) -> None:
    """test_nn.py test_RNN_input_size_zero: output (5, 0, 4 * D), a working backward."""
    D = 2 if bidirectional else 1
    x = torch.zeros(5, 0, 3, requires_grad=True)
    for m in (grukit.GRU(3, 4, bidirectional=bidirectional, backend=backend),
              nn.GRU(3, 4, bidirectional=bidirectional)):  # fmt: skip
        out, h_n = m(x)
        assert out.shape == (5, 0, 4 * D) and h_n.shape == (D, 0, 4)
        (out.sum() + h_n.sum()).backward()
        assert all(p.grad is not None and not p.grad.any() for p in m.parameters())


def test_zero_hidden_size_cell_as_torchs_cell_test() -> None:
    """test_nn.py test_RNN_cell_forward_zero_hidden_size: GRUCell(10, 0) gives (3, 0)."""
    x, hx = torch.randn(3, 10, requires_grad=True), torch.randn(3, 0)
    for cell in (grukit.GRUCell(10, 0), nn.GRUCell(10, 0)):
        out = cell(x, hx)
        assert out.shape == (3, 0)
        assert cell(x).shape == (3, 0)
        out.sum().backward()
    assert x.grad is not None and not x.grad.any()


# ---------------------------------------------------------------- torch.func through the kernel


@needs_fused
@pytest.mark.parametrize("training", [False, True])
def test_grad_and_gradgrad_through_the_fused_backend_as_test_modules(training: bool) -> None:
    """test_modules' test_grad / test_gradgrad: gradcheck and gradgradcheck with batched
    gradients (vmap over the backward), which needs the kernel's batching rule."""
    torch.manual_seed(0)
    m = grukit.GRU(2, 2, batch_first=True, backend="fused").double().train(training)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().requires_grad_() for p in m.parameters())
    x = torch.randn(2, 3, 2, dtype=F64, requires_grad=True)

    def f(x: torch.Tensor, *ps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(m, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, *params), check_batched_grad=True)
    assert m.last_backend == "fused"
    cell = grukit.GRUCell(2, 2, backend="fused").double()
    cp = tuple(p.detach().requires_grad_() for p in cell.parameters())
    cnames = [n for n, _ in cell.named_parameters()]

    def g(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return functional_call(cell, dict(zip(cnames, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(g, (x[:, 0], *cp), check_batched_grad=True)


# ---------------------------------------------------------------- per-sample gradients


def loop_per_sample_grads(
    module: nn.Module, samples: list[tuple[torch.Tensor, ...]], loss: Callable[[Any], torch.Tensor]
) -> list[torch.Tensor]:
    """Per-sample gradients the slow way (test_expanded_weights' for loop): one backward per
    sample, stacked."""
    per = [torch.autograd.grad(loss(module(*s)), list(module.parameters())) for s in samples]
    return [torch.stack(g) for g in zip(*per, strict=True)]


def gru_loss(result: Any) -> torch.Tensor:
    out, h_n = result
    return (out**2).sum() + h_n.sin().sum()


def expanded_grads(module: nn.Module, loss: Callable[[Any], torch.Tensor], *args: Any,
                   **kwargs: Any) -> list[torch.Tensor]:  # fmt: skip
    loss(call_for_per_sample_grads(module, **kwargs)(*args)).backward()
    got = []
    for p in module.parameters():
        got.append(p.grad_sample)
        del p.grad_sample
        assert p.grad is None  # per-sample gradients only, as torch's expanded weights
    return got


@pytest.mark.parametrize("variant", ["gru", "gru_reset_before", "gru1", "mgu", "mgu1", "mingru"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_expanded_weights_per_sample_grads_match_a_loop(variant: str, backend: str) -> None:
    """test_expanded_weights' test_module: call_for_per_sample_grads, then backward, gives
    every parameter a grad_sample equal to the per-sample gradients of a loop (the fused
    backend hands such calls to the reference's per-step path)."""
    torch.manual_seed(0)
    m = grukit.GRU(3, 4, num_layers=2, bidirectional=True, variant=variant, backend=backend)
    m = m.double()
    x, h0 = torch.randn(5, 3, 3, dtype=F64), torch.randn(4, 3, 4, dtype=F64)
    got = expanded_grads(m, gru_loss, x, h0, batch_size=3, batch_first=False)
    assert m.last_backend == "reference"
    samples = [(x[:, i : i + 1], h0[:, i : i + 1]) for i in range(3)]
    for a, b in zip(got, loop_per_sample_grads(m, samples, gru_loss), strict=True):
        close(a, b)


def test_expanded_weights_batch_first_packed_and_cell() -> None:
    torch.manual_seed(0)
    m = grukit.GRU(3, 4, batch_first=True, dropout=0.0).double()
    x = torch.randn(3, 5, 3, dtype=F64)
    got = expanded_grads(m, gru_loss, x)  # batch_first: the batch size read from dim 0
    for a, b in zip(got, loop_per_sample_grads(m, [(x[i : i + 1],) for i in range(3)], gru_loss),
                    strict=True):  # fmt: skip
        close(a, b)
    # packed, sorted by length as test_module's make_packed_sequence: rows = sorted sequences
    lengths = [5, 3, 2]
    packed = pack_padded_sequence(x, lengths, batch_first=True)
    got = expanded_grads(m, lambda r: (r[0].data ** 2).sum() + r[1].sum(), packed, batch_size=3)
    samples = [(x[i : i + 1, : lengths[i]],) for i in range(3)]
    expect = loop_per_sample_grads(m, samples, lambda r: (r[0] ** 2).sum() + r[1].sum())
    for a, b in zip(got, expect, strict=True):
        close(a, b)
    # unsorted: sample i is the packed batch's row i, the sequence sorted_indices[i]
    packed = pack_padded_sequence(x, [2, 5, 3], batch_first=True, enforce_sorted=False)
    got = expanded_grads(m, lambda r: (r[0].data ** 2).sum() + r[1].sum(), packed, batch_size=3)
    samples = [(x[i : i + 1, :n],) for i, n in enumerate([2, 5, 3])]
    expect = loop_per_sample_grads(m, samples, lambda r: (r[0] ** 2).sum() + r[1].sum())
    for a, b in zip(got, expect, strict=True):
        close(a, b[packed.sorted_indices])
    cell = grukit.GRUCell(3, 4).double()
    xc, hc = torch.randn(3, 3, dtype=F64), torch.randn(3, 4, dtype=F64)
    got = expanded_grads(cell, lambda h: h.sin().sum(), xc, hc)
    samples = [(xc[i : i + 1], hc[i : i + 1]) for i in range(3)]
    for a, b in zip(got, loop_per_sample_grads(cell, samples, lambda h: h.sin().sum()),
                    strict=True):  # fmt: skip
        close(a, b)


def test_expanded_weights_with_in_cell_options() -> None:
    """Masks act on states, not weights: evaluation (zoneout's expectation) matches the loop,
    and training (masks drawn per sequence) runs."""
    torch.manual_seed(0)
    m = grukit.GRU(3, 4, num_layers=2, dropout=0.2, zoneout=0.3, recurrent_dropout=0.2,
                   candidate_dropout=0.1).double().eval()  # fmt: skip
    x = torch.randn(5, 3, 3, dtype=F64)
    got = expanded_grads(m, gru_loss, x, batch_size=3, batch_first=False)
    samples = [(x[:, i : i + 1],) for i in range(3)]
    for a, b in zip(got, loop_per_sample_grads(m, samples, gru_loss), strict=True):
        close(a, b)
    got = expanded_grads(m.train(), gru_loss, x, batch_size=3, batch_first=False)
    assert [g.shape[0] for g in got] == [3] * len(got)


def test_expanded_weights_give_torch_nn_grus_per_sample_grads() -> None:
    ours, theirs = gru_pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 3, dtype=F64)
    a = expanded_grads(ours, gru_loss, x, batch_size=2, batch_first=False)
    b = expanded_grads(theirs, gru_loss, x, batch_size=2, batch_first=False)
    for p, q in zip(a, b, strict=True):
        close(p, q)


@pytest.mark.parametrize(
    "kwargs,what",
    [*(({"variant": v}, v) for v in ("gru2", "gru3", "mgu2", "mgu3")),
     ({"layer_norm": True}, "layer_norm"), ({"weight_drop": 0.5}, "weight_drop")],
)  # fmt: skip
def test_expanded_weights_refuse_what_needs_more_than_linear(kwargs: dict, what: str) -> None:
    m = grukit.GRU(3, 4, **kwargs)
    with pytest.raises(RuntimeError, match=rf"expanded weights.*{what}.*vmap"):
        call_for_per_sample_grads(m, batch_size=2, batch_first=False)(torch.randn(5, 2, 3))


@pytest.mark.parametrize(
    "variant,backend",
    [("gru", b) for b in FUSED_BACKENDS] + [("mingru", b) for b in [*FUSED_BACKENDS, "scan"]],
)
def test_vmap_of_grad_per_sample_grads_on_every_backend(variant: str, backend: str) -> None:
    torch.manual_seed(0)
    m = grukit.GRU(3, 4, bidirectional=True, variant=variant, backend=backend).double()
    params = {k: v.detach() for k, v in m.named_parameters()}
    xs = torch.randn(3, 5, 3, dtype=F64)  # three samples, each (L, H_in) unbatched

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return gru_loss(functional_call(m, p, (x,)))

    per = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    assert m.last_backend == backend
    expect = loop_per_sample_grads(m, [(xs[i],) for i in range(3)], gru_loss)
    for name, b in zip(params, expect, strict=True):
        close(per[name], b)


# ---------------------------------------------------------------- arguments and errors


@pytest.mark.parametrize(
    "kwargs",
    [{"bias": 0}, {"bias": 1}, {"bias": "True"}, {"batch_first": 0}, {"batch_first": 1},
     {"batch_first": "False"}, {"hidden_size": 4.0}, {"input_size": "3"}],
)  # fmt: skip
def test_argument_types_as_torch(kwargs: dict) -> None:
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    assert raised(lambda: nn.GRU(**args)) is TypeError
    with pytest.raises(TypeError):
        grukit.GRU(**args)


@pytest.mark.parametrize("name", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [0, -1])
def test_sizes_not_positive_are_value_errors(name: str, value: int) -> None:
    args = {"input_size": 3, "hidden_size": 4, name: value}
    assert issubclass(raised(lambda: nn.GRU(**args)), ValueError)
    with pytest.raises(ValueError, match=name):
        grukit.GRU(**args)


def test_proj_size_is_a_value_error_as_torch() -> None:
    assert raised(lambda: nn.GRU(3, 4, proj_size=2)) is ValueError
    with pytest.raises(ValueError, match="proj_size"):
        grukit.GRU(3, 4, proj_size=2)


CALLS: dict[str, Callable[[nn.Module], Any]] = {
    # test_rnn_args_check: wrong input features, wrong hidden size, wrong layers, wrong batch
    "features": lambda m: m(torch.randn(5, 2, 4)),
    "hidden units": lambda m: m(torch.randn(5, 2, 3), torch.randn(1, 2, 5)),
    "hidden layers": lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 2, 4)),
    "hidden batch": lambda m: m(torch.randn(5, 2, 3), torch.randn(1, 3, 4)),
    "hidden rank": lambda m: m(torch.randn(5, 2, 3), torch.randn(2, 4)),
    "input rank": lambda m: m(torch.randn(5, 2, 3, 1)),
    "dtype": lambda m: m(torch.randn(5, 2, 3, dtype=F64)),
}


@pytest.mark.parametrize("case", list(CALLS))
def test_forward_errors_have_torchs_exception_class(case: str) -> None:
    torch_class = raised(lambda: CALLS[case](nn.GRU(3, 4)))
    with pytest.raises(torch_class):
        CALLS[case](grukit.GRU(3, 4))


CELL_CALLS: dict[str, Callable[[nn.Module], Any]] = {
    # test_RNN_cell_no_broadcasting and the cell's shape and dtype checks
    "hidden batch": lambda c: c(torch.randn(3, 3), torch.randn(1, 4)),
    "hidden units": lambda c: c(torch.randn(3, 3), torch.randn(3, 5)),
    "features": lambda c: c(torch.randn(3, 2), torch.randn(3, 4)),
    "dtype": lambda c: c(torch.randn(3, 3, dtype=F64), torch.randn(3, 4, dtype=F64)),
}


@pytest.mark.parametrize("case", list(CELL_CALLS))
def test_cell_errors_have_torchs_exception_class(case: str) -> None:
    torch_class = raised(lambda: CELL_CALLS[case](nn.GRUCell(3, 4)))
    with pytest.raises(torch_class):
        CELL_CALLS[case](grukit.GRUCell(3, 4))


# ---------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_layers": 2, "bidirectional": True}, {"bias": False, "num_layers": 2}],
)
def test_flat_weights_mode_and_proj_size_as_torch(kwargs: dict) -> None:
    ours, theirs = gru_pair(input_size=3, hidden_size=4, **kwargs)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert ours._all_weights == theirs._all_weights
    assert ours.mode == theirs.mode == "GRU" and ours.proj_size == theirs.proj_size == 0
    for a, b, name in zip(ours._flat_weights, theirs._flat_weights, ours._flat_weights_names,
                          strict=True):  # fmt: skip
        assert a is getattr(ours, name)
        close(a, b, 0)
    assert [[tuple(p.shape) for p in ps] for ps in ours.all_weights] == [
        [tuple(p.shape) for p in ps] for ps in theirs.all_weights
    ]
    ours.float()  # in step after .to() (torch rebuilds its list in _apply)
    assert all(w.dtype == torch.float32 for w in ours._flat_weights)
    state = {k: torch.zeros_like(v) for k, v in ours.state_dict().items()}
    ours.load_state_dict(state)
    assert all(not w.any() for w in ours._flat_weights)
    ours.weight_hh_l0 = nn.Parameter(torch.ones_like(ours.weight_hh_l0))  # as torch's __setattr__
    assert ours._flat_weights[1] is ours.weight_hh_l0


def test_mode_of_other_variants_and_rnnbase() -> None:
    assert grukit.GRU(3, 4, variant="mgu").mode == "MGU"
    assert grukit.GRU(3, 4, variant="mingru").mode == "MINGRU"
    assert grukit.GRU(3, 4, variant="lstm").mode == nn.LSTM(3, 4).mode == "LSTM"
    assert grukit.GRU(3, 4, variant="rnn_tanh").mode == nn.RNN(3, 4).mode == "RNN_TANH"
    # documented: not an nn.RNNBase (whose methods assume torch's cell and cuDNN's modes)
    assert not isinstance(grukit.GRU(3, 4), nn.RNNBase)


# ---------------------------------------------------------------- TorchScript


JIT_DEPRECATED = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


@JIT_DEPRECATED
@pytest.mark.parametrize(
    "variant,backend", [("gru", "auto"), ("gru", "reference"), ("mingru", "scan")]
)
def test_jit_trace_for_a_fixed_shape(variant: str, backend: str) -> None:
    """torch.jit.trace with its default check_trace (two runs must trace the same graph), the
    trace's results and gradients, and torch.jit.save / load of it."""
    torch.manual_seed(0)
    m = grukit.GRU(3, 4, num_layers=2, bidirectional=True, variant=variant, backend=backend)
    cell = grukit.GRUCell(3, 4, variant=variant, backend="auto" if backend == "scan" else backend)
    x, h = torch.randn(5, 2, 3), torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(m, x)  # check_trace=True: re-runs and compares the graphs
        traced_cell = torch.jit.trace(cell, (x[0], h))
        with torch.no_grad():
            torch.jit.trace(cell, (x[0], h))  # the cell's inference fast path is not traced
    x2 = torch.randn(5, 2, 3, requires_grad=True)
    for a, b in zip(traced(x2), m(x2), strict=True):
        close(a, b, 1e-6)
    close(traced_cell(x2[0], h), cell(x2[0], h), 1e-6)
    traced(x2)[0].sum().backward()
    assert x2.grad is not None
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    close(torch.jit.load(buf)(x2)[0], m(x2)[0], 1e-6)


@JIT_DEPRECATED
@pytest.mark.parametrize("module", [grukit.GRU(3, 4), grukit.GRUCell(3, 4)])
def test_jit_script_fails_with_one_sentence_pointing_to_export(module: nn.Module) -> None:
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script cannot compile") as info:
        torch.jit.script(module)
    assert isinstance(info.value, ScriptingError)
    assert "torch.export" in str(info.value) and "ONNX" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ScriptingError):
        torch.jit.script(nn.Sequential(nn.Linear(3, 3), grukit.GRUCell(3, 4)))


# ---------------------------------------------------------------- quantization, save/load, .to


def test_quantize_dynamic_converts_to_torch() -> None:
    torch.manual_seed(0)
    m = grukit.GRU(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        q = torch.ao.quantization.quantize_dynamic(nn.Sequential(m.to_torch()), {nn.GRU})
    assert type(q[0]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    close(q(x)[0], m(x)[0], 0.05)


@pytest.mark.parametrize("cls", [grukit.GRU, grukit.GRUCell])
def test_state_dict_save_load_weights_only(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    a, b = cls(3, 4), cls(3, 4)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 3) if cls is grukit.GRUCell else torch.randn(1, 2, 3)
    for got, want in zip(b(x), a(x), strict=True):
        close(got, want, 0)


def test_non_contiguous_input_and_hidden() -> None:
    ours, theirs = gru_pair(input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(2, 5, 3, dtype=F64).transpose(0, 1)  # (5, 2, 3), not contiguous
    h = torch.randn(2, 2, 4, dtype=F64).transpose(1, 2).contiguous().transpose(1, 2)
    assert not x.is_contiguous() and not h.is_contiguous()
    for a, b in zip(ours(x, h), theirs(x, h), strict=True):
        close(a, b)
    close(ours(x, h)[0], ours(x.contiguous(), h.contiguous())[0], 0)


def test_to_float64_and_to_empty_from_meta() -> None:
    torch.manual_seed(0)
    m = grukit.GRU(3, 4).to(torch.float64)
    assert all(p.dtype == F64 for p in m.parameters())
    assert m(torch.randn(5, 2, 3, dtype=F64))[0].dtype == F64
    for cls in (grukit.GRU, grukit.GRUCell):
        meta = cls(3, 4, device="meta")
        assert all(p.is_meta for p in meta.parameters())
        m = meta.to_empty(device="cpu")
        m.reset_parameters()
        bound = 1 / 4**0.5
        assert all(not p.is_meta and p.abs().max() <= bound for p in m.parameters())
        out = m(torch.randn(2, 3)) if cls is grukit.GRUCell else m(torch.randn(5, 2, 3))[0]
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "args,kwargs",
    [((3, 4), {}), ((3, 4, 2), {"batch_first": True, "dropout": 0.5}),
     ((3, 4), {"bias": False, "bidirectional": True})],
)  # fmt: skip
def test_repr_as_torch(args: tuple, kwargs: dict) -> None:
    assert repr(grukit.GRU(*args, **kwargs)) == repr(nn.GRU(*args, **kwargs))
    cell_kwargs = {"bias": kwargs["bias"]} if "bias" in kwargs else {}
    assert repr(grukit.GRUCell(3, 4, **cell_kwargs)) == repr(nn.GRUCell(3, 4, **cell_kwargs))
