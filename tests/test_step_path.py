"""The streaming step path: ``GRUCell`` and ``GRU.step`` in inference go straight to the kernel
(:class:`grukit.fused.StepPlan`) once a first call has run, with the same results as the
general path, and fall back to it (and its checks and messages) whenever anything changed."""

from __future__ import annotations

import pytest
import torch

import grukit
import grukit.fused
import grukit.rnn

pytestmark = pytest.mark.skipif(
    not grukit.fused.available(), reason=f"fused kernels: {grukit.fused.unavailable_reason()}"
)


def _no_general_path(monkeypatch):
    """Make the general path fail loudly: what still works ran through the plan."""

    def boom(*a, **k):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(grukit.rnn, "_check_tensor", boom)


@pytest.mark.parametrize("variant", ["gru", "gru_reset_before", "mgu", "gru3", "mingru"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cell_plan_equals_the_general_path_bit_for_bit(variant, dtype, monkeypatch):
    torch.manual_seed(0)
    cell = grukit.GRUCell(7, 12, variant=variant, dtype=dtype)
    xs = torch.randn(6, 3, 7, dtype=dtype)
    h = torch.zeros(3, 12, dtype=dtype)
    want = []
    for x in xs:  # the general (autograd) path
        h = cell(x, h).detach()
        want.append(h)
    with torch.no_grad():
        h = torch.zeros(3, 12, dtype=dtype)
        h = cell(xs[0], h)  # the first call makes the plan
        assert cell.__dict__.get("_step_plan") is not None
        _no_general_path(monkeypatch)
        got = [h]
        for x in xs[1:]:
            h = cell(x, h)
            got.append(h)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_cell_plan_matches_torch_grucell():
    torch.manual_seed(1)
    ref = torch.nn.GRUCell(5, 9, dtype=torch.float64)
    cell = grukit.GRUCell(5, 9, dtype=torch.float64)
    cell.load_state_dict(ref.state_dict())
    x, h = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 9, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(cell(x, h), ref(x, h), atol=1e-12, rtol=1e-12)


def test_cell_plan_follows_replaced_and_loaded_parameters():
    torch.manual_seed(2)
    cell = grukit.GRUCell(4, 6)
    other = grukit.GRUCell(4, 6)
    x, h = torch.randn(2, 4), torch.randn(2, 6)
    with torch.no_grad():
        cell(x, h)
        cell.load_state_dict(other.state_dict())  # in place: the plan stays valid
        assert torch.equal(cell(x, h), other(x, h))
        cell.weight_hh = torch.nn.Parameter(torch.zeros(18, 6))  # a new tensor: re-planned
        other.weight_hh = torch.nn.Parameter(torch.zeros(18, 6))
        assert torch.equal(cell(x, h), other(x, h))


def test_cell_plan_keeps_the_general_checks():
    cell = grukit.GRUCell(4, 6)
    with torch.no_grad():
        cell(torch.randn(2, 4), torch.zeros(2, 6))
        with pytest.raises(ValueError, match="Expected hidden size"):
            cell(torch.randn(2, 4), torch.zeros(3, 6))
        with pytest.raises(ValueError, match="input"):
            cell(torch.randn(2, 5), torch.zeros(2, 6))
        with pytest.raises((TypeError, ValueError, RuntimeError), match="dtype|float"):
            cell(torch.randn(2, 4, dtype=torch.float64), torch.zeros(2, 6, dtype=torch.float64))
        cell.backend = "reference"
        cell(torch.randn(2, 4), torch.zeros(2, 6))
        assert cell.last_backend == "reference"


@pytest.mark.parametrize("layers", [1, 3])
def test_gru_step_plan_equals_the_whole_sequence(layers, monkeypatch):
    torch.manual_seed(3)
    m = grukit.GRU(5, 8, num_layers=layers, dtype=torch.float64).eval()
    xs = torch.randn(7, 2, 5, dtype=torch.float64)
    with torch.no_grad():
        want, want_h = m(xs)
        out, h = m.step(xs[0], torch.zeros(layers, 2, 8, dtype=torch.float64))
        assert m.__dict__.get("_step_plans") is not None
        outs = [out]
        monkeypatch.setattr(type(m), "forward", lambda *a, **k: pytest.fail("general path ran"))
        for x in xs[1:]:
            out, h = m.step(x, h)
            outs.append(out)
    torch.testing.assert_close(torch.stack(outs), want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(h, want_h, atol=1e-12, rtol=1e-12)


def test_gru_step_has_no_plan_with_options_or_training_dropout():
    x, h = torch.randn(2, 4), torch.zeros(2, 2, 6)
    with torch.no_grad():
        m = grukit.GRU(4, 6, num_layers=2, zoneout=0.1).eval()
        m.step(x, h)
        assert m.__dict__.get("_step_plans") is None
        m = grukit.GRU(4, 6, num_layers=2, dropout=0.5).train()
        m.step(x, h)
        assert m.__dict__.get("_step_plans") is None
        m.eval()
        m.step(x, h)
        assert m.__dict__.get("_step_plans") is not None
        m.train()  # dropout between the layers again: the general path, a fresh mask per call
        torch.manual_seed(0)
        a, _ = m.step(x, h)
        torch.manual_seed(1)
        b, _ = m.step(x, h)
        assert not torch.equal(a, b)


@pytest.mark.parametrize("variant", ["gru", "gru_reset_before", "mgu", "mingru"])
def test_batch_of_one_rows_equal_the_reference(variant):
    """Rows of one (a batch of 1, and the tail of a packed batch) take the matrix-vector
    product; forward and every gradient equal the reference in float64."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(4)
    kw = {"num_layers": 2, "variant": variant, "dtype": torch.float64}
    ref = grukit.GRU(6, 10, backend="reference", **kw)
    fused = grukit.GRU(6, 10, backend="fused", **kw)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(9, 2, 6, dtype=torch.float64)
    for inp in (x[:, :1], pack_padded_sequence(x, [9, 3])):
        results = []
        for m in (ref, fused):
            m.zero_grad()
            out, h = m(inp)
            data = out.data if hasattr(out, "data") and not isinstance(out, torch.Tensor) else out
            (data.square().sum() + h.sum()).backward()
            results.append([data.detach(), h.detach(), *(p.grad for p in m.parameters())])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)
    assert fused.last_backend == "fused"


@pytest.mark.parametrize("threads", [1, 2])
def test_wide_float32_step_at_batch_one_equals_torch_grucell(threads, restore_threads):
    """At batch 1 in float32 the weights are not transposed for brgemm (every product is one
    row, the matrix-vector loop) and a wide product splits its outputs between the threads:
    the step equals torch.nn.GRUCell to float32 precision, on 1 and 2 threads alike."""
    torch.set_num_threads(threads)
    grukit.fused.set_thread_policy("all")
    torch.manual_seed(2)
    cell = grukit.GRUCell(88, 520)
    ref = torch.nn.GRUCell(88, 520)
    ref.load_state_dict(cell.state_dict())
    x, h = torch.randn(4, 1, 88), torch.randn(1, 520)
    with torch.no_grad():
        hc, hr = h, h
        for t in range(4):
            hc, hr = cell(x[t], hc), ref(x[t], hr)
            torch.testing.assert_close(hc, hr, atol=1e-5, rtol=1e-5)
    assert cell.__dict__.get("_step_plan") is not None


def test_rnn_step_says_what_shapes_it_takes():
    cell = grukit.GRUCell(3, 4)
    w = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    spec = grukit.fused.kernel_spec(grukit.variants.VARIANTS["gru"])
    with pytest.raises(RuntimeError, match=r"x \(N, I\) and h \(N, H\)"):
        torch.ops.grukit.rnn_step(torch.randn(2, 3), torch.randn(3, 4), *w, spec)
