"""minGRU's parallel log-space scan (grukit/scan.py) against the sequential reference."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import grukit
from grukit.reference import LayerWeights, reference_layer
from grukit.scan import linear_scan_log, mingru_scan_layer, packed_time_index
from grukit.variants import get_variant

MINGRU = get_variant("mingru")
TOL = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.float64: {"atol": 1e-10, "rtol": 1e-10}}


def _weights_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)


def layer_weights(Hin, H, dtype, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.rand(2 * H, Hin, generator=gen, dtype=torch.float64) * 2 - 1) * scale
    b = (torch.rand(2 * H, generator=gen, dtype=torch.float64) * 2 - 1) * scale
    return LayerWeights(w.to(dtype).requires_grad_(), None, b.to(dtype).requires_grad_(), None)


def layer_results(fn, data, batch_sizes, h0, w, reverse, **kw):
    """Output, h_n and the gradients (data, h0, weight_ih, bias_ih) of a random linear loss."""
    data = data.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_()
    out, hn = fn(MINGRU, data, batch_sizes, h0, w, reverse, **kw)
    loss = (out * _weights_like(out, 1)).sum() + (hn * _weights_like(hn, 2)).sum()
    grads = torch.autograd.grad(loss, [data, h0, w.weight_ih, w.bias_ih])
    return (out.detach(), hn.detach(), *grads)


def compare(a, b, dtype, what, grad_tol=None):
    """Outputs then gradients. float64: 1e-10. float32: 1e-5 relative to the largest value of
    each tensor (elements near 0 get the tensor's scale); gradients ``grad_tol`` (see
    ``test_scan_float32_gradient_precision`` for why float32 gradients get only 1e-3 here)."""
    names = ("out", "h_n", "grad data", "grad h0", "grad weight_ih", "grad bias_ih")
    for i, (name, x, y) in enumerate(zip(names, a, b, strict=True)):
        scale = max(y.abs().max().item(), 1e-30)
        diff = (x - y).abs().max().item()
        print(f"{what} {name}: max abs diff {diff:.3g} (relative to max {diff / scale:.3g})")
        if dtype == torch.float64:
            tol = TOL[dtype]
        else:
            rel = 1e-5 if i < 2 or grad_tol is None else grad_tol
            tol = {"atol": rel * scale, "rtol": rel}
        torch.testing.assert_close(x, y, **tol, msg=lambda m, n=name: f"{what} {n}: {m}")


F32_GRAD_TOL = 1e-3


# -- the layer: scan == reference ----------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 7, 64, 65, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_layer_equals_reference(T, dtype, reverse):
    N, Hin, H = 3, 4, 5
    gen = torch.Generator().manual_seed(T)
    data = torch.randn(T * N, Hin, generator=gen, dtype=torch.float64).to(dtype)
    h0 = (torch.randn(N, H, generator=gen, dtype=torch.float64) * 3).to(dtype)  # both signs
    assert (h0 < 0).any() and (h0 > 0).any()
    w = layer_weights(Hin, H, dtype, seed=T)
    bs = [N] * T
    compare(
        layer_results(mingru_scan_layer, data, bs, h0, w, reverse),
        layer_results(reference_layer, data, bs, h0, w, reverse),
        dtype,
        f"T={T}",
        grad_tol=F32_GRAD_TOL,
    )


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_layer_chunk_sizes_packed(chunk, reverse):
    dtype = torch.float64
    lengths = [9, 9, 6, 2, 1]  # sorted: batch_sizes of a packed batch
    bs = [sum(1 for n in lengths if t < n) for t in range(max(lengths))]
    Hin, H = 2, 3
    gen = torch.Generator().manual_seed(chunk)
    data = torch.randn(sum(bs), Hin, generator=gen, dtype=dtype)
    h0 = torch.randn(len(lengths), H, generator=gen, dtype=dtype) * 2
    w = layer_weights(Hin, H, dtype, seed=1)
    compare(
        layer_results(mingru_scan_layer, data, bs, h0, w, reverse, chunk=chunk),
        layer_results(reference_layer, data, bs, h0, w, reverse),
        dtype,
        f"chunk={chunk}",
    )


def test_scan_layer_rejects_other_variants():
    w = layer_weights(2, 3, torch.float64)
    with pytest.raises(ValueError, match="minGRU only"):
        mingru_scan_layer(get_variant("gru"), torch.zeros(2, 2), [1, 1], torch.zeros(1, 3), w)


def test_packed_time_index():
    bs = [3, 2, 2, 1]  # lengths 4, 3, 1
    row, valid = packed_time_index(bs, reverse=False)
    # packed rows: step 0 -> 0,1,2; step 1 -> 3,4; step 2 -> 5,6; step 3 -> 7
    assert valid.tolist() == [
        [True, True, True],
        [True, True, False],
        [True, True, False],
        [True, False, False],
    ]
    assert row[valid].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    row_r, valid_r = packed_time_index(bs, reverse=True)
    assert valid_r.tolist() == valid.tolist()
    assert row_r[:, 0].tolist() == [7, 5, 3, 0]  # sequence 0 backwards
    assert row_r[:, 1].tolist() == [6, 4, 1, 0]  # the invalid cell points at row 0
    assert row_r[:, 2].tolist() == [2, 0, 0, 0]


# -- the module: backend="scan" ------------------------------------------------------------------


def module_results(m, x, h0, lengths=None):
    x = x.detach().clone().requires_grad_()
    h0 = h0.detach().clone().requires_grad_()
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, hn = m(inp, h0)
    if lengths is not None:
        out, _ = pad_packed_sequence(out)
    loss = (out * _weights_like(out, 3)).sum() + (hn * _weights_like(hn, 4)).sum()
    grads = torch.autograd.grad(loss, [x, h0, *m.parameters()])
    return [out.detach(), hn.detach(), *grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("T", [7, 65])
def test_scan_module_equals_reference(dtype, bidir, packed, T):
    N, Hin, H, layers = 4, 3, 5, 2
    D = 2 if bidir else 1
    torch.manual_seed(T)
    scan = grukit.GRU(
        Hin, H, layers, bidirectional=bidir, variant="mingru", backend="scan", dtype=dtype
    )
    ref = grukit.GRU(
        Hin, H, layers, bidirectional=bidir, variant="mingru", backend="reference", dtype=dtype
    )
    ref.load_state_dict(scan.state_dict())
    x = torch.randn(T, N, Hin, dtype=dtype)
    h0 = torch.randn(layers * D, N, H, dtype=dtype) * 4 - 1
    lengths = [T, 1, T - 2, 3] if packed else None
    a, b = module_results(scan, x, h0, lengths), module_results(ref, x, h0, lengths)
    assert scan.last_backend == "scan" and ref.last_backend == "reference"
    for i, (u, v) in enumerate(zip(a, b, strict=True)):
        scale = v.abs().max().item()
        print(f"item {i}: max abs diff {(u - v).abs().max().item():.3g} (scale {scale:.3g})")
        if dtype == torch.float64:
            torch.testing.assert_close(u, v, **TOL[dtype])
        else:
            rel = 1e-5 if i < 2 else F32_GRAD_TOL
            torch.testing.assert_close(u, v, atol=rel * scale, rtol=rel)


def test_scan_module_half_precision_runs():
    torch.manual_seed(0)
    m = grukit.GRU(3, 4, variant="mingru", backend="scan", dtype=torch.bfloat16)
    ref = grukit.GRU(3, 4, variant="mingru", backend="reference")
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    x = torch.randn(20, 2, 3)
    out, hn = m(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref(x.bfloat16().float())[0], atol=3e-2, rtol=3e-2)


# -- linear_scan_log against a plain loop -----------------------------------------------------


def plain_loop(a, b, h0):
    h, out = h0, []
    for t in range(a.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("T", [1, 5, 64, 100])
def test_linear_scan_log_equals_loop(chunk, T):
    gen = torch.Generator().manual_seed(chunk * 1000 + T)
    N, H = 2, 3
    a = torch.rand(T, N, H, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    b = torch.rand(T, N, H, generator=gen, dtype=torch.float64) * 2 + 1e-3
    h0 = torch.randn(N, H, generator=gen, dtype=torch.float64) * 5
    got = linear_scan_log(a.log(), b.log(), h0, chunk=chunk)
    expected = plain_loop(a, b, h0)
    print(f"T={T} chunk={chunk}: max abs diff {(got - expected).abs().max().item():.3g}")
    assert got.shape == (T, N, H)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_linear_scan_log_gradients_equal_loop():
    gen = torch.Generator().manual_seed(7)
    T, N, H = 10, 2, 3
    a = (torch.rand(T, N, H, generator=gen, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    b = (torch.rand(T, N, H, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    h0 = torch.randn(N, H, generator=gen, dtype=torch.float64).requires_grad_()
    w = torch.randn(T, N, H, generator=gen, dtype=torch.float64)
    g1 = torch.autograd.grad((linear_scan_log(a.log(), b.log(), h0, chunk=3) * w).sum(), [a, b, h0])
    g2 = torch.autograd.grad((plain_loop(a, b, h0) * w).sum(), [a, b, h0])
    for u, v in zip(g1, g2, strict=True):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)


def test_linear_scan_log_strong_decay():
    """a_t = e^-40 (a gate shut hard): the state is b_t after each step, no overflow."""
    T, N, H = 70, 1, 2
    a = torch.full((T, N, H), torch.e**-40, dtype=torch.float64)
    a[::7] = 0.5
    b = torch.rand(T, N, H, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.1
    h0 = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    for chunk in (3, 64):
        got = linear_scan_log(a.log(), b.log(), h0, chunk=chunk)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, plain_loop(a, b, h0), atol=1e-10, rtol=1e-10)


def test_gradcheck_linear_scan_log():
    gen = torch.Generator().manual_seed(3)
    T, N, H = 5, 1, 2
    log_a = (-torch.rand(T, N, H, generator=gen, dtype=torch.float64) - 0.05).requires_grad_()
    log_b = torch.randn(T, N, H, generator=gen, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(N, H, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, h: linear_scan_log(a, b, h, chunk=2), (log_a, log_b, h0)
    )


@pytest.mark.parametrize("bidir", [False, True])
def test_gradcheck_scan_module(bidir):
    torch.manual_seed(0)
    m = grukit.GRU(2, 3, bidirectional=bidir, variant="mingru", backend="scan", dtype=torch.float64)
    names = [k for k, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 if bidir else 1, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, h0, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps, strict=True)), (x, h0))

    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7)


# -- long, saturated sequences ----------------------------------------------------------------


def saturated_case(dtype, scale=30.0):
    """T = 2000 steps with |pre-activations| up to ~400: gates at 0 or 1 to working precision."""
    T, N, Hin, H = 2000, 2, 3, 4
    gen = torch.Generator().manual_seed(11)
    data = (torch.randn(T * N, Hin, generator=gen, dtype=torch.float64) * 3).to(dtype)
    h0 = torch.tensor([[5.0, -5.0, 0.0, 1e-3], [-2.0, 2.0, 100.0, -100.0]], dtype=dtype)
    w = layer_weights(Hin, H, dtype, seed=12, scale=scale)
    return data, [N] * T, h0, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_long_saturated_sequence_stays_finite(dtype):
    data, bs, h0, w = saturated_case(dtype)
    with torch.no_grad():
        gx = torch.nn.functional.linear(data, w.weight_ih, w.bias_ih)
    print(f"max |pre-activation| {gx.abs().max().item():.1f}")
    assert gx.abs().max() > 100
    if dtype == torch.float32:  # gates exactly 0 and 1 in float32
        assert (torch.sigmoid(gx) == 1).any() and (torch.sigmoid(gx) == 0).any()
    scan = layer_results(mingru_scan_layer, data, bs, h0, w, False)
    names = ("out", "h_n", "grad data", "grad h0", "grad weight_ih", "grad bias_ih")
    for name, t in zip(names, scan, strict=True):
        assert torch.isfinite(t).all(), f"{name} of the scan has NaN or Inf"
    ref = layer_results(reference_layer, data, bs, h0, w, False)
    for i, (name, u, v) in enumerate(zip(names, scan, ref, strict=True)):
        scale = v.abs().max().item()
        print(f"{name}: max abs diff {(u - v).abs().max().item():.3g} (scale {scale:.3g})")
        if dtype == torch.float64:
            torch.testing.assert_close(u, v, atol=1e-9 * scale, rtol=1e-9)
        elif i < 2:  # float32 outputs; float32 gradients: see the precision test below
            torch.testing.assert_close(u, v, atol=2e-4 * scale, rtol=2e-4)


@pytest.mark.parametrize("case", ["T300", "T64", "saturated_T2000"])
def test_scan_float32_gradient_precision(case):
    """float32 gradients of the scan against the float64 truth, relative to their largest value.

    The float32 sequential reference is within ~2e-6 of the truth in every case here; the scan's
    gradients should be within ~1e-5 like its outputs.
    """
    if case == "saturated_T2000":
        data, bs, h0, w = saturated_case(torch.float32, scale=3.0)
    else:
        T, N, Hin, H = int(case[1:]), 3, 4, 5
        gen = torch.Generator().manual_seed(T)
        data = torch.randn(T * N, Hin, generator=gen, dtype=torch.float64).float()
        h0 = (torch.randn(N, H, generator=gen, dtype=torch.float64) * 3).float()
        w, bs = layer_weights(Hin, H, torch.float32, seed=T), [N] * T
    w64 = LayerWeights(
        w.weight_ih.detach().double().requires_grad_(), None,
        w.bias_ih.detach().double().requires_grad_(), None,
    )  # fmt: skip
    truth = layer_results(reference_layer, data.double(), bs, h0.double(), w64, False)
    scan = layer_results(mingru_scan_layer, data, bs, h0, w, False)
    ref32 = layer_results(reference_layer, data, bs, h0, w, False)
    names = ("out", "h_n", "grad data", "grad h0", "grad weight_ih", "grad bias_ih")
    errors = {}
    for name, t, s, r in zip(names, truth, scan, ref32, strict=True):
        scale = t.abs().max().item()
        errors[name] = ((s.double() - t).abs().max().item() / scale,
                        (r.double() - t).abs().max().item() / scale)  # fmt: skip
        print(f"{case} {name}: scan {errors[name][0]:.2g}, float32 reference {errors[name][1]:.2g}")
    for name, (scan_err, ref_err) in errors.items():
        assert ref_err < 1e-5, f"control: the float32 reference is off by {ref_err:.2g} ({name})"
        assert scan_err < 1e-5, (
            f"BUG grukit/scan.py: float32 minGRU scan, {case}: {name} is off by {scan_err:.2g} of "
            f"its largest value (float32 sequential reference: {ref_err:.2g}). The default "
            "chunk=64 lets |log A| grow within a chunk and exp(log A + logcumsumexp(log b - log A))"
            " loses precision in the backward pass; chunk=16 or less is ~10x closer."
        )


def test_long_sequence_keeps_state_with_closed_gate():
    """z -> 0 for all steps: h stays h0 for 2000 steps (no drift from the log-space sums)."""
    T, H = 2000, 3
    w = LayerWeights(
        torch.zeros(2 * H, 1), None, torch.cat([torch.full((H,), -80.0), torch.zeros(H)]), None
    )
    h0 = torch.tensor([[-3.0, 0.5, 7.0]])
    out, hn = mingru_scan_layer(MINGRU, torch.ones(T, 1), [1] * T, h0, w)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(hn, h0, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("unbatched", [False, True])
def test_gru_cell_scan_equals_reference(unbatched):
    torch.manual_seed(8)
    scan = grukit.GRUCell(3, 4, variant="mingru", backend="scan", dtype=torch.float64)
    ref = grukit.GRUCell(3, 4, variant="mingru", backend="reference", dtype=torch.float64)
    ref.load_state_dict(scan.state_dict())
    x, h = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64) * 3
    if unbatched:
        x, h = x[0], h[0]
    torch.testing.assert_close(scan(x, h), ref(x, h), **TOL[torch.float64])
    assert scan.last_backend == "scan"
    # the update by hand: h' = (1 - z) h + z g(a_n)
    a = torch.nn.functional.linear(x, scan.weight_ih, scan.bias_ih)
    z, an = torch.sigmoid(a[..., :4]), a[..., 4:]
    n = torch.where(an >= 0, an + 0.5, torch.sigmoid(an))
    torch.testing.assert_close(scan(x, h), (1 - z) * h + z * n, **TOL[torch.float64])
