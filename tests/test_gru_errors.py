"""Bad input to grukit.GRU / GRUCell: each error is a ValueError, TypeError or RuntimeError whose
message says what was expected and what came."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import grukit
import grukit.fused
from grukit.variants import ALL_VARIANTS

BACKENDS = ["reference", "fused", "auto"]  # input checks run before any backend


@pytest.fixture(params=BACKENDS)
def gru(request):
    """A 2-layer GRU(4, 5) on each backend (the checks run before any backend)."""
    torch.manual_seed(0)
    return grukit.GRU(4, 5, 2, backend=request.param)


def x3(T=3, N=2, F=4, **kw):
    return torch.randn(T, N, F, **kw)


# -- input shape --------------------------------------------------------------------------------


def test_wrong_feature_size(gru):
    with pytest.raises(ValueError, match=r"input_size.*Expected 4, got 6"):
        gru(x3(F=6))


def test_wrong_feature_size_hints_at_the_misplaced_dimension(gru):
    with pytest.raises(ValueError, match=r"Expected 4, got 2.*dimension 0 has 4.*last dimension"):
        gru(torch.randn(4, 3, 2))


def test_wrong_feature_size_unbatched(gru):
    with pytest.raises(ValueError, match=r"Expected 4, got 3"):
        gru(torch.randn(5, 3))


@pytest.mark.parametrize("shape,rank", [((4,), 1), ((3, 2, 1, 4), 4)])
def test_wrong_rank(gru, shape, rank):
    with pytest.raises(ValueError, match=rf"Expected input to be 2D or 3D, got {rank}D"):
        gru(torch.randn(shape))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("variant", ["gru", "mgu", "mingru"])
def test_empty_batch_gives_empty_results_and_a_working_backward(variant, batch_first):
    """As torch.nn.GRU (test_RNN_input_size_zero): outputs (T, 0, D*H), h_n (D*L, 0, H), and
    backward runs (the parameters' gradients are zeros)."""
    m = grukit.GRU(4, 5, num_layers=2, bidirectional=True, batch_first=batch_first,
                   variant=variant)  # fmt: skip
    x = torch.randn((0, 3, 4) if batch_first else (3, 0, 4), requires_grad=True)
    out, h = m(x)
    assert out.shape == ((0, 3, 10) if batch_first else (3, 0, 10))
    assert h.shape == (4, 0, 5)
    (out.sum() + h.sum()).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    if variant == "gru":
        ref = torch.nn.GRU(4, 5, num_layers=2, bidirectional=True, batch_first=batch_first)
        ref_out, ref_h = ref(x.detach())
        assert ref_out.shape == out.shape and ref_h.shape == h.shape


@pytest.mark.parametrize("shape", [(0, 2, 4), (0, 4)])
def test_zero_length_sequences(gru, shape):
    with pytest.raises(ValueError, match=r"zero-length sequences.*sequence length 0"):
        gru(torch.randn(shape))


# -- hidden state -------------------------------------------------------------------------------


def test_h0_wrong_hidden_size(gru):
    with pytest.raises(
        ValueError, match=re.escape("Expected hidden size (2, 2, 5), got (2, 2, 6)")
    ):
        gru(x3(), torch.randn(2, 2, 6))


def test_h0_wrong_layers(gru):
    with pytest.raises(
        ValueError, match=re.escape("Expected hidden size (2, 2, 5), got (4, 2, 5)")
    ):
        gru(x3(), torch.randn(4, 2, 5))


def test_h0_batch_mismatch_hints_at_batch_first(gru):
    with pytest.raises(ValueError, match=r"got \(2, 3, 5\).*batch sizes differ.*batch_first=False"):
        gru(x3(), torch.randn(2, 3, 5))


def test_batch_first_mixup():
    """A batch_first module given a time-major batch: h0's batch size shows the mix-up."""
    m = grukit.GRU(4, 5, batch_first=True)
    T, N = 6, 2
    x_time_major = torch.randn(T, N, 4)
    h0 = torch.zeros(1, N, 5)
    with pytest.raises(
        ValueError, match=r"batch sizes differ: 2 in hx, 6 in the input.*batch_first=True"
    ):
        m(x_time_major, h0)


def test_h0_rank_mismatch(gru):
    with pytest.raises(ValueError, match=r"batched 3-D input, hx should also be 3-D but got 2-D"):
        gru(x3(), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"unbatched 2-D input, hx should also be 2-D but got 3-D"):
        gru(torch.randn(3, 4), torch.randn(2, 1, 5))


def test_h0_wrong_shape_unbatched(gru):
    with pytest.raises(ValueError, match=r"Expected hidden size.*got"):
        gru(torch.randn(3, 4), torch.randn(2, 6))


def test_hx_tuple_for_gru_variant(gru):
    h = torch.zeros(2, 2, 5)
    with pytest.raises(TypeError, match=r"variant 'gru' takes hx as one Tensor, got a tuple"):
        gru(x3(), (h, h))


def test_hx_not_a_tensor(gru):
    with pytest.raises(TypeError, match=r"expected hx to be a Tensor, got list"):
        gru(x3(), [[0.0]])


# -- dtype / device -----------------------------------------------------------------------------


def test_dtype_mismatch_input(gru):
    with pytest.raises(
        TypeError, match=r"input has dtype torch.float64 but the parameters are torch.float32"
    ):
        gru(x3(dtype=torch.float64))


def test_dtype_mismatch_h0(gru):
    with pytest.raises(
        TypeError, match=r"hx has dtype torch.float64 but the parameters are torch.float32"
    ):
        gru(x3(), torch.zeros(2, 2, 5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_non_float_input(gru, dtype):
    x = torch.ones(3, 2, 4, dtype=dtype)
    with pytest.raises(TypeError, match=rf"floating-point tensor, got {dtype}"):
        gru(x)


def test_non_tensor_input(gru):
    with pytest.raises(TypeError, match=r"expected input to be a Tensor, got list"):
        gru([[[0.0] * 4]])


def test_device_mismatch_input():
    m = grukit.GRU(4, 5, device="meta")
    with pytest.raises(ValueError, match=r"input is on cpu but the parameters are on meta"):
        m(x3())


def test_device_mismatch_h0(gru):
    with pytest.raises(ValueError, match=r"hx is on meta but the parameters are on cpu"):
        gru(x3(), torch.zeros(2, 2, 5, device="meta"))


# -- constructor ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [grukit.GRU, grukit.GRUCell])
def test_unknown_variant_lists_valid_names(cls):
    with pytest.raises(ValueError, match=r"unknown variant 'gru4'; valid variants are") as info:
        cls(4, 5, variant="gru4")
    for name in ALL_VARIANTS:
        assert name in str(info.value)


def test_unknown_backend():
    with pytest.raises(
        ValueError,
        match=r"unknown backend 'cuda'; valid backends are: auto, compiled, fused, reference, "
        "scan, torch",
    ):
        grukit.GRU(4, 5, backend="cuda")


@pytest.mark.parametrize("variant", ["gru", "mgu", "gru3", "lstm"])
def test_scan_backend_needs_mingru(variant):
    with pytest.raises(ValueError, match=r"backend='scan'"):
        grukit.GRU(4, 5, variant=variant, backend="scan")


def test_scan_backend_accepts_mingru():
    assert grukit.GRU(4, 5, variant="mingru", backend="scan").backend == "scan"


def test_baseline_rejects_fused_backend():
    with pytest.raises(ValueError, match=r"'lstm' runs torch's own implementation"):
        grukit.GRU(4, 5, variant="lstm", backend="fused")


@pytest.mark.parametrize("variant", ["gru3", "mgu3"])
@pytest.mark.parametrize("cls", [grukit.GRU, grukit.GRUCell])
def test_bias_only_gates_need_bias(variant, cls):
    with pytest.raises(ValueError, match=rf"variant '{variant}'.*biases alone.*bias=True"):
        cls(4, 5, bias=False, variant=variant)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"hidden_size": 0}, r"hidden_size must be a positive integer, got 0"),
        ({"input_size": 0}, r"input_size must be a positive integer, got 0"),
        ({"hidden_size": 3.0}, r"hidden_size must be a positive integer, got 3.0"),
        ({"hidden_size": True}, r"hidden_size must be a positive integer, got True"),
        ({"num_layers": 0}, r"num_layers must be a positive integer, got 0"),
        ({"num_layers": -1}, r"num_layers must be a positive integer, got -1"),
        ({"dropout": 1.5}, r"dropout should be a number in range \[0, 1\].*got 1.5"),
        ({"dropout": -0.1}, r"dropout should be a number in range \[0, 1\].*got -0.1"),
        ({"dropout": float("nan")}, r"dropout.*got nan"),
    ],
)
def test_invalid_constructor_args(kwargs, match):
    args = {"input_size": 4, "hidden_size": 5, "num_layers": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        grukit.GRU(**args)


def test_dropout_with_one_layer_warns():
    with pytest.warns(
        UserWarning, match=r"num_layers greater than 1.*dropout=0.5 and num_layers=1"
    ):
        grukit.GRU(4, 5, num_layers=1, dropout=0.5)


def test_no_dropout_warning_otherwise():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grukit.GRU(4, 5, num_layers=2, dropout=0.5)
        grukit.GRU(4, 5, num_layers=1, dropout=0.0)


# -- backend cannot run ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_backend_rejects_half_precision(dtype):
    m = grukit.GRU(4, 5, backend="fused", dtype=dtype)
    with pytest.raises(
        RuntimeError, match=rf"backend='fused' cannot run: .*float32 and float64, got {dtype}"
    ):
        m(x3(dtype=dtype))


def test_fused_backend_rejects_non_cpu():
    m = grukit.GRU(4, 5, backend="fused", device="meta")
    with pytest.raises(RuntimeError, match=r"backend='fused' cannot run: .*CPU tensors.*meta"):
        m(x3(device="meta"))


def test_fused_cell_rejects_half_precision():
    m = grukit.GRUCell(4, 5, backend="fused", dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"float32 and float64"):
        m(torch.randn(2, 4, dtype=torch.float16))


def test_auto_backend_runs_half_precision_on_reference():
    m = grukit.GRU(4, 5, backend="auto", dtype=torch.bfloat16)
    out, _ = m(x3(dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and m.last_backend == "reference"


# -- packed sequences ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows,batch_sizes",
    [(3, [1, 2]), (4, [1, 2]), (3, [2, 2]), (2, [2, 0]), (3, [3, 0])],
    ids=["increasing", "increasing-rows-mismatch", "rows-mismatch", "zero", "zero-tail"],
)
def test_malformed_packed_sequence(gru, rows, batch_sizes):
    packed = PackedSequence(torch.randn(rows, 4), torch.tensor(batch_sizes))
    with pytest.raises(
        ValueError, match=r"malformed PackedSequence.*non-increasing.*enforce_sorted=False"
    ):
        gru(packed)


def test_packed_sequence_wrong_features(gru):
    packed = pack_padded_sequence(torch.randn(3, 2, 6), torch.tensor([3, 2]))
    with pytest.raises(ValueError, match=r"Expected 4, got 6"):
        gru(packed)


def test_packed_sequence_h0_batch_mismatch(gru):
    packed = pack_padded_sequence(torch.randn(3, 2, 4), torch.tensor([1, 3]), enforce_sorted=False)
    with pytest.raises(ValueError, match=r"Expected hidden size \(2, 2, 5\), got \(2, 3, 5\)"):
        gru(packed, torch.zeros(2, 3, 5))


def test_pack_padded_unsorted_with_enforce_sorted():
    """torch's own error (grukit cannot see it): just that it is raised and says why."""
    with pytest.raises(RuntimeError, match=r"enforce_sorted"):
        pack_padded_sequence(torch.randn(3, 2, 4), torch.tensor([1, 3]), enforce_sorted=True)


# -- the step API and GRUCell -------------------------------------------------------------------


def test_step_bidirectional():
    with pytest.raises(ValueError, match=r"step\(\) needs a unidirectional network"):
        grukit.GRU(4, 5, bidirectional=True).step(torch.randn(2, 4))


def test_step_wrong_rank(gru):
    with pytest.raises(ValueError, match=r"step\(\) takes one time step.*got 3-D"):
        gru.step(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"step\(\) takes one time step.*got list"):
        gru.step([1.0, 2.0])


def test_step_wrong_state(gru):
    with pytest.raises(ValueError, match=r"Expected hidden size \(2, 2, 5\), got \(2, 3, 5\)"):
        gru.step(torch.randn(2, 4), torch.randn(2, 3, 5))


@pytest.fixture(params=BACKENDS)
def cell(request):
    return grukit.GRUCell(4, 5, backend=request.param)


def test_cell_wrong_rank(cell):
    with pytest.raises(ValueError, match=r"Expected input to be 1D or 2D, got 3D"):
        cell(torch.randn(2, 3, 4))


def test_cell_wrong_features(cell):
    with pytest.raises(ValueError, match=r"Expected 4, got 3"):
        cell(torch.randn(2, 3))


def test_cell_hidden_wrong_batch(cell):
    with pytest.raises(ValueError, match=re.escape("Expected hidden size (2, 5), got (3, 5)")):
        cell(torch.randn(2, 4), torch.randn(3, 5))


def test_cell_hidden_rank(cell):
    with pytest.raises(ValueError, match=r"Expected hidden to be 2D like the input, got 1D"):
        cell(torch.randn(2, 4), torch.randn(5))


def test_cell_empty_batch_gives_an_empty_state(cell):
    h = cell(torch.randn(0, 4))
    assert h.shape == (0, cell.hidden_size)
    h.sum().backward()
    assert torch.nn.GRUCell(4, cell.hidden_size)(torch.randn(0, 4)).shape == h.shape


def test_cell_dtype_and_type(cell):
    with pytest.raises(
        TypeError, match=r"input has dtype torch.float64 but the parameters are torch.float32"
    ):
        cell(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"floating-point tensor, got torch.int64"):
        cell(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"expected hx to be a Tensor, got tuple"):
        cell(torch.randn(2, 4), (torch.randn(2, 5),))


def test_count_parameters_unknown_variant():
    with pytest.raises(
        ValueError, match=r"count_parameters: unknown variant 'foo'; valid variants are"
    ):
        grukit.count_parameters("foo", 3, 4)


def test_errors_leave_the_module_usable(gru):
    """A rejected call changes nothing: the next good call gives the same result as before."""
    if gru.backend == "fused" and not grukit.fused.available():
        pytest.skip(f"fused kernels unavailable: {grukit.fused.unavailable_reason()}")
    x = x3()
    before, _ = gru(x)
    with pytest.raises(ValueError):
        gru(x3(F=6))
    after, _ = gru(x)
    assert torch.equal(before, after)


# -- argument types, as torch.nn.GRU checks them ---------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"bias": 0}, r"bias should be of type bool, got int 0"),
        ({"bias": 1}, r"bias should be of type bool, got int 1"),
        ({"bias": "True"}, r"bias should be of type bool, got str 'True'"),
        ({"batch_first": "False"}, r"batch_first should be of type bool, got str 'False'"),
        ({"batch_first": 1}, r"batch_first should be of type bool, got int 1"),
        ({"hidden_size": 3.0}, r"hidden_size must be a positive integer, got 3.0"),
        ({"input_size": "4"}, r"input_size must be a positive integer, got '4'"),
        ({"num_layers": 2.0}, r"num_layers must be a positive integer, got 2.0"),
    ],
)
def test_argument_types_raise_type_error_as_torch_does(kwargs, match):
    """torch.nn.GRU raises TypeError here; grukit's error is a TypeError and a ValueError, so
    code written against either class keeps catching it (a string "False" used to build a
    batch-first module silently)."""
    from grukit.errors import ArgumentTypeError

    args = {"input_size": 4, "hidden_size": 5}
    args.update(kwargs)
    with pytest.raises(TypeError, match=match) as info:
        grukit.GRU(**args)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ArgumentTypeError)
    with pytest.raises(TypeError):
        torch.nn.GRU(**args)


def test_grucell_reads_bias_as_torch_does():
    """torch.nn.GRUCell takes any truthy bias (it has no type check): so does grukit's."""
    for bias in (1, 0):
        ref = torch.nn.GRUCell(4, 5, bias=bias)
        cell = grukit.GRUCell(4, 5, bias=bias)
        assert [n for n, _ in cell.named_parameters()] == [n for n, _ in ref.named_parameters()]


# ---------------------------------------------------------------------------- torch's classes

_CASES = {
    "feature size": (lambda m: m(torch.randn(3, 2, 5)), "gru"),
    "h0 hidden size": (lambda m: m(torch.randn(3, 2, 4), torch.randn(1, 2, 7)), "gru"),
    "h0 batch": (lambda m: m(torch.randn(3, 2, 4), torch.randn(1, 3, 6)), "gru"),
    "h0 rank, unbatched": (lambda m: m(torch.randn(3, 4), torch.randn(1, 1, 6)), "gru"),
    "h0 rank, batched": (lambda m: m(torch.randn(3, 2, 4), torch.randn(2, 6)), "gru"),
    "input rank": (lambda m: m(torch.randn(1, 3, 2, 4)), "gru"),
    "dtype": (lambda m: m(torch.randn(3, 2, 4, dtype=torch.float64)), "gru"),
    "cell feature size": (lambda m: m(torch.randn(2, 5)), "cell"),
    "cell no broadcasting": (lambda m: m(torch.randn(3, 4), torch.randn(1, 6)), "cell"),
    "cell input rank": (lambda m: m(torch.randn(1, 2, 4)), "cell"),
    "cell dtype": (lambda m: m(torch.randn(3, 4, dtype=torch.float64)), "cell"),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_a_bad_call_raises_the_class_torch_raises(case: str) -> None:
    """Code written against torch.nn.GRU catches the same exception class from grukit."""
    call, kind = _CASES[case]
    ours = grukit.GRU(4, 6) if kind == "gru" else grukit.GRUCell(4, 6)
    theirs = torch.nn.GRU(4, 6) if kind == "gru" else torch.nn.GRUCell(4, 6)
    with pytest.raises(Exception) as torch_error:
        call(theirs)
    with pytest.raises(type(torch_error.value)):
        call(ours)


def test_proj_size_is_refused_as_torch_refuses_it() -> None:
    with pytest.raises(ValueError, match="proj_size"):
        torch.nn.GRU(4, 6, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        grukit.GRU(4, 6, proj_size=2)
    assert grukit.GRU(4, 6, proj_size=0).hidden_size == 6


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_a_cell_of_zero_units_gives_empty_states_as_torch_does(variant: str) -> None:
    """torch's test_RNN_cell_forward_zero_hidden_size: GRUCell(10, 0) is a valid module."""
    cell = grukit.GRUCell(10, 0, variant=variant)
    if variant == "gru":
        theirs = torch.nn.GRUCell(10, 0)
        cell.load_state_dict(theirs.state_dict())  # the same (empty) parameters
        assert [p.shape for p in cell.parameters()] == [p.shape for p in theirs.parameters()]
    x = torch.randn(3, 10, requires_grad=True)
    out = cell(x)
    h = out[0] if isinstance(out, tuple) else out
    assert h.shape == (3, 0)
    (h.sum() + x.sum()).backward()
    assert x.grad is not None and x.grad.shape == (3, 10)
    single = cell(torch.randn(10))
    assert (single[0] if isinstance(single, tuple) else single).shape == (0,)
